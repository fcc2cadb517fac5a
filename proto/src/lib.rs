//! Generated gRPC clients and servers for every P2P File Transfer service,
//! and the encoded file descriptor set that servers publish through
//! reflection. Scripts and the other crates use these types; nothing here is
//! written by hand except this module tree.

/// Accounts, logins and tokens (`p2p.auth.v1`).
pub mod auth {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("p2p.auth.v1");
    }
}

/// The file index, holders, load and source selection (`p2p.index.v1`).
pub mod index {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("p2p.index.v1");
    }
}

/// The agent-to-agent data path (`p2p.peer.v1`).
pub mod peer {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("p2p.peer.v1");
    }
}

/// The agent's local control API (`p2p.agent.v1`).
pub mod agent {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("p2p.agent.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p2p_descriptor.bin"));
