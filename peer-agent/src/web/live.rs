//! Server-Sent Events that keep the open pages current: `/events/files`
//! re-renders the Files table whenever index-svc's `WatchFiles` reports a
//! change (and every few seconds for this agent's own state),
//! `/events/downloads` sends the Downloads list as progress moves, and
//! `/events/sharing` the shares being hashed (with [`Sharing`], the list
//! the share handlers keep). Each
//! feed is a task in the web app's `TaskTracker`; it ends when the browser
//! goes away, the web session ends, or the agent shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Web;
use super::guard::Authed;
use super::pages::FilesQuery;
use super::render;
use p2p_proto::agent::v1 as pb;
use p2p_services::manifest::FileId;

/// How often the Downloads and Share feeds look at progress.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

type Events = Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

fn sse(rx: mpsc::Receiver<Result<Event, Infallible>>) -> Events {
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// `GET /events/files?...`: changes to the Files page with the same query
/// ([`FilesQuery`]): a `row` event with one row's HTML (its `data-after`
/// says where it goes) for a row added, updated or moved, a `remove`
/// event with a file id, a `total` event with the new count, and `html`
/// (the whole page's rows) only when the page the browser shows (`v`)
/// is not the one the agent lists on connecting.
pub async fn files(State(web): State<Web>, authed: Authed, Query(q): Query<FilesQuery>) -> Events {
    let (tx, rx) = mpsc::channel(16);
    let feed = web.clone();
    web.tasks
        .spawn(async move { feed_files(feed, authed, q, tx).await });
    sse(rx)
}

/// The SSE event that shows `change` on the page.
fn file_event(viewer: &render::Viewer, shown: &str, change: pb::FileChange) -> Option<Event> {
    use pb::file_change::Change;
    match change.change {
        Some(Change::Page(page)) => {
            let html = render::file_rows(viewer, &page.files);
            (render::version(&html) != shown).then(|| Event::default().event("html").data(html.0))
        }
        Some(Change::Upsert(row)) => {
            let html = render::file_row(viewer, &row, Some(&change.after_file_id));
            Some(Event::default().event("row").data(html.0))
        }
        Some(Change::RemovedFileId(file_id)) => FileId::parse(&file_id)
            .ok()
            .map(|id| Event::default().event("remove").data(id.to_string())),
        None => change
            .total_count
            .map(|total| Event::default().event("total").data(total.to_string())),
    }
}

async fn feed_files(
    web: Web,
    authed: Authed,
    query: FilesQuery,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let viewer = authed.viewer();
    let api = web.api.clone();
    let gone = tx.clone();
    api.follow_files(
        &query.request(),
        async move { gone.closed().await },
        |change| {
            let valid = still_valid(&web, &authed);
            let event = match change {
                _ if !valid => Some(Event::default().event("ended").data("log in again")),
                Ok(change) => file_event(&viewer, &query.v, change),
                // The index is briefly unreachable: keep showing what the page
                // has.
                Err(_) => None,
            };
            let tx = tx.clone();
            async move {
                match event {
                    Some(event) => tx.send(Ok(event)).await.is_ok() && valid,
                    None => !tx.is_closed(),
                }
            }
        },
    )
    .await;
}

/// The shares being hashed right now, for the Share page.
#[derive(Debug, Default)]
pub struct Sharing {
    jobs: std::sync::Mutex<Vec<render::ShareJob>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One running share; it leaves the list when dropped.
pub struct SharingJob<'a> {
    sharing: &'a Sharing,
    id: u64,
}

impl Sharing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<render::ShareJob>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a share of `name` until the returned job is dropped.
    pub fn start(&self, name: String) -> SharingJob<'_> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().push(render::ShareJob {
            id,
            name,
            hashed_bytes: 0,
            total_bytes: 0,
        });
        SharingJob { sharing: self, id }
    }

    /// The running shares.
    pub fn all(&self) -> Vec<render::ShareJob> {
        self.lock().clone()
    }
}

impl SharingJob<'_> {
    /// Records how far hashing got.
    pub fn progress(&self, hashed_bytes: u64, total_bytes: u64) {
        if let Some(job) = self.sharing.lock().iter_mut().find(|j| j.id == self.id) {
            job.hashed_bytes = hashed_bytes;
            job.total_bytes = total_bytes;
        }
    }
}

impl Drop for SharingJob<'_> {
    fn drop(&mut self) {
        self.sharing.lock().retain(|j| j.id != self.id);
    }
}

/// `GET /events/sharing`: the shares being hashed, as HTML, as they move.
pub async fn sharing(
    State(web): State<Web>,
    authed: Authed,
    Query(q): Query<FilesQuery>,
) -> Events {
    sample(web, authed, q.v, |web, _| {
        render::sharing_rows(&web.sharing.all())
    })
}

/// Whether the feed's session is still live and logged in as the agent's
/// account.
fn still_valid(web: &Web, authed: &Authed) -> bool {
    let agent = web.api.session().user().map(|u| u.username);
    web.sessions
        .get(&authed.session.id)
        .is_some_and(|s| s.username.is_some() && s.username == agent)
}

/// `GET /events/downloads`: the Downloads list, as HTML, as it moves.
pub async fn downloads(
    State(web): State<Web>,
    authed: Authed,
    Query(q): Query<FilesQuery>,
) -> Events {
    sample(web, authed, q.v, |web, viewer| {
        render::download_rows(viewer, &web.api.transfers())
    })
}

/// A feed that renders `view` every [`SAMPLE_EVERY`] and sends it when it
/// differs from what the page shows (`shown`, a [`render::version`]).
fn sample(
    web: Web,
    authed: Authed,
    mut shown: String,
    view: impl Fn(&Web, &render::Viewer) -> maud::Markup + Send + 'static,
) -> Events {
    let (tx, rx) = mpsc::channel(4);
    let feed = web.clone();
    web.tasks.spawn(async move {
        let viewer = authed.viewer();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            if !still_valid(&feed, &authed) {
                let _ = tx
                    .send(Ok(Event::default().event("ended").data("log in again")))
                    .await;
                return;
            }
            let html = view(&feed, &viewer);
            let version = render::version(&html);
            if version != shown {
                if tx
                    .send(Ok(Event::default().event("html").data(html.0)))
                    .await
                    .is_err()
                {
                    return;
                }
                shown = version;
            }
            tokio::select! {
                () = tx.closed() => return,
                () = feed.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
    });
    sse(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_listed_while_it_hashes_and_gone_after() {
        let sharing = Sharing::default();
        let job = sharing.start("big.iso".into());
        job.progress(50, 200);
        let all = sharing.all();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].hashed_bytes, all[0].total_bytes), (50, 200));
        let html = render::sharing_rows(&all).into_string();
        assert!(html.contains("25 %"), "{html}");
        drop(job);
        assert!(sharing.all().is_empty());
    }
}
