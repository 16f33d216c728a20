//! Compiles `vault.proto` with protoc (Debian's protobuf-compiler; scripts/setup.sh installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=vault.proto");
    tonic_prost_build::configure()
        // Chunk bodies arrive as `bytes::Bytes`: slices of the receive buffer, not copies.
        .bytes(".vault.v1.PutChunkRequest.data")
        .bytes(".vault.v1.GetChunkReply.data")
        .compile_protos(&["vault.proto"], &["."])?;
    Ok(())
}
