# vaultfs mounts through FUSE: fusermount3 (AutoUnmount) and /dev/fuse. The tests also run a
# writer without CAP_FSETID through setpriv (util-linux), mount through mount(8) in a mount
# namespace (unshare), and check the shipped units with systemd-analyze (systemd).
apt_install fuse3 util-linux systemd
