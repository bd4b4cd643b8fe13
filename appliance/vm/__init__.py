"""Building the workshop VM: the qemu base image and runner, the Vagrant driver, provisioning."""
