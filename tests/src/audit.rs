//! The "nothing lost" checks every fault test ends with: no published file
//! vanished from the index, every holding the index offers for an honest
//! agent is backed by verified data in that agent's files, and every file
//! an agent calls complete matches its manifest's hash.
//!
//! The checks read the index through its public API and the agents' files
//! straight from disk (data dirs are on the test machine's filesystem, also
//! for agents in network namespaces).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::agent::v1::{ListFilesRequest, LocalState};
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_proto::index::v1::{
    GetFileRequest, ListFilesRequest as IndexListFiles, LocateSourcesRequest,
};
use p2p_services::client::with_bearer;
use p2p_services::manifest::{Bitfield, Manifest, wire};
use tonic::transport::Channel;

/// An agent whose holdings must be real: its peer id at the index, its data
/// dir and its control API.
pub struct HonestAgent {
    /// For messages.
    pub name: String,
    /// Its id at the index.
    pub peer_id: String,
    /// Where its partial downloads live (`<data_dir>/partial/<id>.part`).
    pub data_dir: PathBuf,
    /// Its control API, for the files it calls complete.
    pub control: AgentControlClient<Channel>,
}

impl HonestAgent {
    /// The audit's view of an agent, on loopback or on an emulated LAN host.
    pub async fn of(agent: &impl crate::AgentHandle) -> Self {
        Self {
            name: agent.name().to_string(),
            peer_id: agent.status().await.peer_id,
            data_dir: agent.data_dir().to_path_buf(),
            control: agent.control(),
        }
    }
}

/// Panics, saying what was lost, unless:
/// - every file in `published` is still listed by the index;
/// - for every file the index lists, each holding it offers (LocateSources,
///   online holders) for an agent in `honest` is backed by data on that
///   agent's disk: a complete holder has the whole file with the right hash,
///   a partial holder has every claimed chunk verified in its `.part` file;
/// - every file an honest agent reports complete matches its hash.
pub async fn assert_nothing_lost(
    mut index: IndexServiceClient<Channel>,
    token: &str,
    published: &[String],
    honest: &[HonestAgent],
) {
    let listed: Vec<String> = index
        .list_files(with_bearer(
            IndexListFiles {
                page_size: 1000,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap_or_else(|s| panic!("list the index's files: {s}"))
        .into_inner()
        .files
        .into_iter()
        .map(|f| f.file_id)
        .collect();
    for id in published {
        assert!(
            listed.contains(id),
            "published file {id} vanished from the index"
        );
    }

    for id in &listed {
        let manifest = manifest_of(&mut index, token, id).await;
        let sources = index
            .locate_sources(with_bearer(
                LocateSourcesRequest {
                    file_id: id.clone(),
                    limit: 64,
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap_or_else(|s| panic!("locate sources of {id}: {s}"))
            .into_inner()
            .sources;
        for source in sources {
            let Some(agent) = honest.iter().find(|a| a.peer_id == source.peer_id) else {
                continue;
            };
            if source.complete {
                let path = complete_path(agent, id).await.unwrap_or_else(|| {
                    panic!(
                        "the index offers {} as a complete holder of {id}, but the agent has no complete copy",
                        agent.name
                    )
                });
                assert_whole_file(&manifest, &path, &agent.name);
            } else {
                let claimed = Bitfield::from_bytes(&source.bitfield, manifest.chunk_count())
                    .unwrap_or_else(|e| panic!("bad bitfield for {}: {e}", agent.name));
                let part = agent.data_dir.join("partial").join(format!("{id}.part"));
                let path = match complete_path(agent, id).await {
                    Some(complete) => complete,
                    None => part,
                };
                for index in claimed.held() {
                    assert!(
                        chunk_on_disk_matches(&manifest, &path, index),
                        "the index says {} holds chunk {index} of {id}, but {} does not have it verified",
                        agent.name,
                        path.display()
                    );
                }
            }
        }
    }

    for agent in honest {
        let files = agent
            .control
            .clone()
            .list_files(ListFilesRequest::default())
            .await
            .unwrap_or_else(|s| panic!("list files on {}: {s}", agent.name))
            .into_inner()
            .files;
        for file in files {
            if file.local_state != LocalState::Complete as i32 {
                continue;
            }
            let id = file.file.map(|f| f.file_id).unwrap_or_default();
            let manifest = manifest_of(&mut index, token, &id).await;
            assert_whole_file(&manifest, Path::new(&file.local_path), &agent.name);
        }
    }
}

async fn manifest_of(index: &mut IndexServiceClient<Channel>, token: &str, id: &str) -> Manifest {
    let response = index
        .get_file(with_bearer(
            GetFileRequest {
                file_id: id.to_string(),
            },
            token,
        ))
        .await
        .unwrap_or_else(|s| panic!("get file {id}: {s}"))
        .into_inner();
    wire::from_proto(response.manifest.expect("GetFile carries the manifest"))
        .unwrap_or_else(|e| panic!("the index's manifest of {id} is invalid: {e}"))
}

async fn complete_path(agent: &HonestAgent, id: &str) -> Option<PathBuf> {
    let files = agent
        .control
        .clone()
        .list_files(ListFilesRequest::default())
        .await
        .ok()?
        .into_inner()
        .files;
    files
        .into_iter()
        .find(|f| {
            f.local_state == LocalState::Complete as i32
                && f.file.as_ref().is_some_and(|i| i.file_id == id)
        })
        .map(|f| PathBuf::from(f.local_path))
}

fn assert_whole_file(manifest: &Manifest, path: &Path, who: &str) {
    let hash = crate::file_hash(path);
    assert_eq!(
        hash.as_bytes(),
        &manifest.file_hash,
        "{who}'s complete copy {} does not match the hash of {}",
        path.display(),
        manifest.file_id()
    );
}

fn chunk_on_disk_matches(manifest: &Manifest, path: &Path, index: u32) -> bool {
    let Some(len) = manifest.chunk_len(index) else {
        return false;
    };
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(manifest.chunk_offset(index)))?;
        let mut data = vec![0u8; len as usize];
        file.read_exact(&mut data)?;
        Ok(data)
    };
    read().is_ok_and(|data| manifest.chunk_matches(index, &data))
}
