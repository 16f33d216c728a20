# netctl: Open vSwitch (its tests run a private ovsdb-server and ovs-vswitchd per namespace
# "host"), iproute2 for namespaces and veths, ethtool to turn off TX checksum offload in
# namespaces, ping and socat for the tests' traffic, sysctl (procps) for namespace settings.
apt_install openvswitch-switch iproute2 ethtool iputils-ping socat procps
