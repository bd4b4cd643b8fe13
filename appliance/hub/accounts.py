"""Who gets a hub account (roster + admins) and where the organizer's hub state lives."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.hub.passwords import ACCOUNTS_FILE
from appliance.hub.roster import Participant, check_name, read_roster
from appliance.errors import ConfigError
from appliance.vm.cachepaths import workshop_state



def accounts_path(config: LoadedConfig) -> Path:
    """Outside the repository (cache/ is never committed), mode 0600."""
    return workshop_state(config) / ACCOUNTS_FILE


def slips_path(config: LoadedConfig) -> Path:
    """A new name each run: a sheet not yet printed is never overwritten by the next run's."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = workshop_state(config) / f"hub-slips-{stamp}.html"
    number = 1
    while path.exists():
        number += 1
        path = workshop_state(config) / f"hub-slips-{stamp}-{number}.html"
    return path


def hub_people(config: LoadedConfig) -> list[Participant]:
    """The roster's participants, then any admin the roster does not list."""
    roster = config.roster_path
    people = read_roster(roster) if roster is not None else []
    listed = {p.name for p in people}
    for admin in config.workshop.hub.admins:
        try:
            check_name(admin)
        except ValueError as exc:
            raise ConfigError(f"{config.path}: hub.admins: {exc}") from None
        if admin not in listed:
            people.append(Participant(admin))
            listed.add(admin)
    if not people:
        raise ConfigError(f"{config.path}: hub: no users; set hub.roster to a CSV of participants or list hub.admins")
    return people
