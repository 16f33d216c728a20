# vaultfs mounts through FUSE: fusermount3 (AutoUnmount) and /dev/fuse.
apt_install fuse3
