//! The wire between `vaultfs` and `storaged`: the gRPC schema (with the storage daemon's
//! issue) and the limits both sides enforce, in one place with units in their names.

pub mod limits;
