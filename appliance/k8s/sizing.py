"""How many nodes of a given size a class needs: from the per-user limits in workshop.yml and the
measured memory of a busy participant (bench/user_memory.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from appliance.config import Workshop
from appliance.errors import UsageError

# --- measured: bench/user_memory.py, every notebook in quick mode in a real kernel --------------
# 2026-12-03, on the build machine: 2-vCPU x86_64 VM, 23.5 GB, Debian 12; the workshop lock on
# CPython 3.13 (TensorFlow CPU, Keras 3), the notebook tier's generated assets and random weights
# in the real formats. Kernel peaks (MB): 00 363, 01 863, 02 849, 03 1050, 04 1119, 05 937, 06 788,
# 07 776, 08-X 184, 08-Z 148. The largest kernel peak (process-tree RSS and the kernel's own
# high-water mark, VmHWM) plus an idle JupyterLab server, which a participant's pod holds beside it.
# Quick mode: full-length lessons on the real data use more (bench/notebooks.py measures those).
MEASURED_KERNEL_PEAK_MB = 1119
MEASURED_PEAK_NOTEBOOK = "04-commerce-transfer-learning.ipynb"
MEASURED_SERVER_MB = 96
MEASURED_BUSY_USER_MB = MEASURED_KERNEL_PEAK_MB + MEASURED_SERVER_MB
MEASURED_ON = f"2026-12-03, 2-vCPU x86_64 VM, CPython 3.13, peak in {MEASURED_PEAK_NOTEBOOK}, quick mode"

# What a node keeps for itself: GKE's published reservation for the kubelet and system (a
# share of each memory and CPU band) plus the eviction threshold, and the daemon sets every node
# runs (kube-proxy, the network plugin, z2jh's continuous image puller).
_MEMORY_BANDS_GB = ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (math.inf, 0.02))
_CPU_BANDS = ((1, 0.06), (1, 0.01), (2, 0.005), (math.inf, 0.0025))
EVICTION_MB = 100
DAEMONSETS_MB = 256
DAEMONSETS_CPU = 0.1


def _reserved(total: float, bands: tuple[tuple[float, float], ...]) -> float:
    reserved, left = 0.0, total
    for width, share in bands:
        part = min(left, width)
        reserved += part * share
        left -= part
        if left <= 0:
            break
    return reserved


def allocatable(node_memory_gb: float, node_cpus: float) -> tuple[float, float]:
    """(MB, CPUs) left for participants' pods on one node."""
    memory_mb = node_memory_gb * 1024 - _reserved(node_memory_gb, _MEMORY_BANDS_GB) * 1024 - EVICTION_MB - DAEMONSETS_MB
    cpus = node_cpus - _reserved(node_cpus, _CPU_BANDS) - DAEMONSETS_CPU
    return max(memory_mb, 0.0), max(cpus, 0.0)


@dataclass(frozen=True)
class Sizing:
    participants: int
    node_memory_gb: float
    node_cpus: float
    per_user_mb: int
    limit_mb: int
    guarantee_mb: int
    measured_mb: int
    cpu_guarantee: float
    cpu_limit: float
    allocatable_mb: float
    allocatable_cpus: float
    per_node: int
    bound_by: str  # "memory", "CPU" or "GPU"
    nodes: int
    node_gpus: int = 0

    @property
    def dominant(self) -> str:
        return "the measured busy peak" if self.measured_mb > self.limit_mb else "the limit hub.memory_mb"


def size(workshop: Workshop, participants: int, node_memory_gb: float, node_cpus: float,
         measured_mb: int = MEASURED_BUSY_USER_MB, node_gpus: int = 0) -> Sizing:
    if participants < 1:
        raise UsageError(f"--participants {participants}: give the number of participants, 1 or more")
    if not node_memory_gb > 0 or not node_cpus > 0:
        raise UsageError(f"--node-memory-gb {node_memory_gb:g} --node-cpus {node_cpus:g}: give a node's size, both above 0")
    hub, k8s = workshop.hub, workshop.kubernetes
    if k8s.gpu and node_gpus < 1:
        raise UsageError(f"--node-gpus {node_gpus}: kubernetes.gpu is true (one GPU each); give the GPUs of one node")
    guarantee_mb = k8s.memory_guarantee_mb if k8s.memory_guarantee_mb is not None else hub.memory_mb
    # Everyone may reach the limit in the same minute (one lesson, one cell); a limit below what
    # a busy participant measurably uses is not a saving but killed kernels, so the larger counts.
    per_user_mb = max(hub.memory_mb, guarantee_mb, measured_mb)
    memory_mb, cpus = allocatable(node_memory_gb, node_cpus)
    by_memory = int(memory_mb // per_user_mb)
    by_cpu = int(math.floor(cpus / k8s.cpu_guarantee + 1e-9))
    bounds = {"memory": by_memory, "CPU": by_cpu, **({"GPU": node_gpus} if k8s.gpu else {})}
    bound_by = min(bounds, key=lambda name: bounds[name])
    per_node = bounds[bound_by]
    if per_node < 1:
        raise UsageError(
            f"a node of {node_memory_gb:g} GB and {node_cpus:g} CPUs ({memory_mb:.0f} MB, {cpus:.2f} CPUs for pods) holds "
            f"no participant ({per_user_mb} MB and {k8s.cpu_guarantee:g} CPU each); give a bigger node")
    return Sizing(
        participants=participants, node_memory_gb=node_memory_gb, node_cpus=node_cpus, per_user_mb=per_user_mb,
        limit_mb=hub.memory_mb, guarantee_mb=guarantee_mb, measured_mb=measured_mb,
        cpu_guarantee=k8s.cpu_guarantee, cpu_limit=hub.cpus, allocatable_mb=memory_mb, allocatable_cpus=cpus,
        per_node=per_node, bound_by=bound_by, nodes=math.ceil(participants / per_node),
        node_gpus=node_gpus if k8s.gpu else 0,
    )


def describe(s: Sizing) -> list[str]:
    gpus = f", {s.node_gpus} GPUs" if s.node_gpus else ""
    lines = [
        f"each participant: {s.per_user_mb} MB ({s.dominant} dominates: limit {s.limit_mb} MB, measured busy peak "
        f"{s.measured_mb} MB), {s.cpu_guarantee:g} CPU guaranteed (limit {s.cpu_limit:g})",
        f"one node of {s.node_memory_gb:g} GB and {s.node_cpus:g} CPUs{gpus} leaves {s.allocatable_mb / 1024:.1f} GB and "
        f"{s.allocatable_cpus:.2f} CPUs for participants: it holds {s.per_node} ({s.bound_by} is the bound); "
        f"the largest class one node holds is {s.per_node}",
        f"nodes: {s.nodes} x {s.node_memory_gb:g} GB / {s.node_cpus:g} CPUs{gpus} for {s.participants} participants "
        f"({s.nodes * s.per_node} places), plus a small node for the hub and proxy (z2jh's core pods)",
    ]
    if s.measured_mb > s.limit_mb:
        lines.append(f"warning: hub.memory_mb ({s.limit_mb} MB) is below the measured busy peak ({s.measured_mb} MB): "
                     "kernels would be killed mid-lesson; raise hub.memory_mb")
    if s.guarantee_mb < s.per_user_mb:
        lines.append(f"note: the scheduler reserves {s.guarantee_mb} MB each (kubernetes.memory_guarantee_mb); these "
                     "nodes hold everyone at the larger number, a fuller packing risks out-of-memory kills")
    return lines
