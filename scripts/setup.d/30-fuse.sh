# vaultfs mounts through FUSE: fusermount3 (AutoUnmount) and /dev/fuse. The tests also run a
# writer without CAP_FSETID through setpriv (util-linux).
apt_install fuse3 util-linux
