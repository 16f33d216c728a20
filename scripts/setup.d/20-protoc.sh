# The gRPC schema (proto/vault.proto) is compiled at build time by protoc.
apt_install protobuf-compiler
