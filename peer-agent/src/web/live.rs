//! Server-Sent Events that keep the open pages current: `/events/files`
//! re-renders the Files table whenever index-svc's `WatchFiles` reports a
//! change (and every few seconds for this agent's own state), and
//! `/events/downloads` sends the Downloads list as progress moves. Each
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

/// How often the Downloads feed looks at progress.
const DOWNLOADS_EVERY: Duration = Duration::from_millis(250);

type Events = Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

fn sse(rx: mpsc::Receiver<Result<Event, Infallible>>) -> Events {
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// `GET /events/files?q=`: the Files table's rows, as HTML, on each change.
pub async fn files(State(web): State<Web>, authed: Authed, Query(q): Query<FilesQuery>) -> Events {
    let (tx, rx) = mpsc::channel(4);
    let feed = web.clone();
    web.tasks
        .spawn(async move { feed_files(feed, authed, q, tx).await });
    sse(rx)
}

async fn feed_files(
    web: Web,
    authed: Authed,
    query: FilesQuery,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let viewer = authed.viewer();
    let mut shown = query.v;
    let api = web.api.clone();
    api.follow_files(&query.q, |listing| {
        let html = listing.ok().map(|files| render::file_rows(&viewer, &files));
        let valid = still_valid(&web, &authed);
        let event = match html {
            _ if !valid => Some(Event::default().event("ended").data("log in again")),
            Some(html) if render::version(&html) != shown => {
                shown = render::version(&html);
                Some(Event::default().event("html").data(html.0))
            }
            // Unchanged, or the index is briefly unreachable: keep showing
            // what the page has.
            _ => None,
        };
        let tx = tx.clone();
        async move {
            match event {
                Some(event) => tx.send(Ok(event)).await.is_ok() && valid,
                None => !tx.is_closed(),
            }
        }
    })
    .await;
}

fn still_valid(web: &Web, authed: &Authed) -> bool {
    web.sessions.get(&authed.session.id).is_some()
        && web
            .api
            .session()
            .user()
            .is_some_and(|u| u.username == authed.session.username)
}

/// `GET /events/downloads`: the Downloads list, as HTML, as it moves.
pub async fn downloads(
    State(web): State<Web>,
    authed: Authed,
    Query(q): Query<FilesQuery>,
) -> Events {
    let (tx, rx) = mpsc::channel(4);
    let feed = web.clone();
    web.tasks.spawn(async move {
        let viewer = authed.viewer();
        let mut shown = q.v;
        let mut tick = tokio::time::interval(DOWNLOADS_EVERY);
        loop {
            if !still_valid(&feed, &authed) {
                let _ = tx
                    .send(Ok(Event::default().event("ended").data("log in again")))
                    .await;
                return;
            }
            let html = render::download_rows(&viewer, &feed.api.transfers());
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
