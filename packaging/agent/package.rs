//! Nothing to compile: this manifest only describes a Debian package
//! for cargo-deb (see Cargo.toml beside it).
