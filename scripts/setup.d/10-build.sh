# Building the workspace: a C compiler for the -sys crates.
apt_install build-essential pkg-config
