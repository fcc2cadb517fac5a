//! Drive a P2P File Transfer agent from Rust with the `p2p-proto` crate's
//! generated clients: show the agent's status, list the network's files
//! and, with `--download NAME`, download one and follow its progress.
//!
//! ```sh
//! cargo run -p p2p-proto --example agent_client -- --agent 127.0.0.1:50054 --download report.pdf
//! ```

use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_proto::agent::v1::{DownloadRequest, DownloadStage, ListFilesRequest, StatusRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let agent = flag("--agent").unwrap_or_else(|| "127.0.0.1:50054".into());
    let mut client = AgentControlClient::connect(format!("http://{agent}")).await?;

    let status = client.status(StatusRequest {}).await?.into_inner();
    let user = status.user.map(|u| u.username).unwrap_or_default();
    println!(
        "agent {agent}: logged in: {} {user}, peer {}",
        status.logged_in, status.peer_id
    );

    let files = client
        .list_files(ListFilesRequest::default())
        .await?
        .into_inner()
        .files;
    println!("{} file(s) in the network", files.len());
    for entry in &files {
        if let Some(file) = &entry.file {
            println!(
                "  {:40} {:>14} bytes  {} holder(s)",
                file.name, file.size_bytes, file.online_holders
            );
        }
    }

    if let Some(name) = flag("--download") {
        let mut stream = client
            .download(DownloadRequest {
                file: name,
                destination: flag("--destination").unwrap_or_default(),
                force: true,
            })
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            println!(
                "  {:?} {}/{} bytes from {} source(s)",
                event.stage(),
                event.have_bytes,
                event.total_bytes,
                event.sources_in_use
            );
            if event.stage() == DownloadStage::Done {
                println!("downloaded to {}", event.final_path);
            }
        }
    }
    Ok(())
}
