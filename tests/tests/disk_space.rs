//! A full disk never strands an agent: a download that cannot fit is refused
//! before it writes a byte, one that fills the disk anyway fails clearly,
//! and `p2p rm` frees the space even on a full disk.
//!
//! The agent's data dir is a small tmpfs, which needs root. Elsewhere the
//! tests print why they are skipped; in CI (`CI=true`) they must run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p2p_tests::AgentHandle as _;
use p2p_tests::{
    AgentOptions, Cluster, ClusterOptions, assert_same_content, eventually, random_file,
};

/// A tmpfs of a few MiB mounted at a path, unmounted on drop.
struct SmallFilesystem {
    path: PathBuf,
}

impl SmallFilesystem {
    /// Mounts `size_mib` MiB of tmpfs at `path`, or says why it cannot.
    fn mount(path: &Path, size_mib: u32) -> Option<Self> {
        let why_not = if !rustix::process::geteuid().is_root() {
            Some("not root".to_string())
        } else {
            std::fs::create_dir_all(path).expect("create the mount point");
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
                .arg(path)
                .output();
            match out {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
                Err(e) => Some(e.to_string()),
            }
        };
        match why_not {
            None => Some(Self {
                path: path.to_path_buf(),
            }),
            Some(reason) if std::env::var_os("CI").is_some_and(|v| v == "true") => {
                panic!("cannot mount a small filesystem in CI: {reason}")
            }
            Some(reason) => {
                eprintln!(
                    "skipped: cannot mount a small tmpfs ({reason}); run as root to test a full disk"
                );
                None
            }
        }
    }

    /// Writes zeros into `name` until the filesystem is full.
    fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path.join(name);
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let block = vec![0u8; 256 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.flush();
        path
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Free bytes where `path` is.
fn free_bytes(path: &Path) -> u64 {
    let stat = rustix::fs::statvfs(path).expect("statvfs");
    stat.f_bavail * stat.f_frsize
}

fn part_files(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("partial"))
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_bigger_than_the_free_space_is_refused_before_any_byte_is_written() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let Some(_fs) = SmallFilesystem::mount(&cluster.dir().join("bob"), 24) else {
        return;
    };
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 64 * 1024 * 1024, 51);
    let id = a.share(&original).await;

    let dest = b.data_dir().join("big.bin");
    let out = b.p2p(&["get", &id, "-o", dest.to_str().unwrap()]).await;
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("needs 64.0 MiB,") && out.stderr.contains("MiB free on "),
        "the refusal does not say how much is needed and free: {out}"
    );
    assert!(!dest.exists());
    assert!(part_files(b.data_dir()).is_empty(), "a .part file was made");
    let counters = a.status().await.counters.unwrap_or_default();
    assert_eq!(
        counters.bytes_uploaded, 0,
        "bytes were sent for a refused download"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_filled_during_a_download_fails_it_and_rm_frees_the_space() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let Some(fs) = SmallFilesystem::mount(&cluster.dir().join("bob"), 24) else {
        return;
    };
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("1MiB"))
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 8 * 1024 * 1024, 52);
    let id = a.share(&original).await;
    let dest = b.data_dir().join("file.bin");
    let dest_arg = dest.to_str().unwrap().to_string();

    let get_args = ["get", id.as_str(), "-o", dest_arg.as_str()];
    let (out, filler) = tokio::join!(b.p2p(&get_args), async {
        eventually(Duration::from_secs(30), "the download to start", || async {
            let file = b.network_file(&id).await?;
            (file.local_bytes >= 1024 * 1024).then_some(())
        })
        .await;
        fs.fill("filler.bin")
    });
    assert!(!out.success(), "the disk is full: {out}");
    assert!(
        out.stderr.contains("full"),
        "the message does not say the disk is full: {out}"
    );
    assert!(!dest.exists());

    let before = free_bytes(b.data_dir());
    b.p2p_ok(&["rm", &id]).await;
    assert!(
        part_files(b.data_dir()).is_empty(),
        "rm left the .part file"
    );
    // At least 1 MiB of chunks was written; the database may take a page.
    let after = free_bytes(b.data_dir());
    assert!(
        after >= before + 512 * 1024,
        "rm freed only {} bytes",
        after.saturating_sub(before)
    );
    let status = b.status().await;
    assert_eq!(status.partial_downloads, 0, "{status:?}");

    std::fs::remove_file(filler).unwrap();
    let got = b.get(&id, &dest).await;
    assert_same_content(&original, &got);
}
