//! `GET /folder`: one folder of the network, or a subfolder of it, with
//! breadcrumbs, paged, and Download buttons (which post to the Files
//! page's `/files/download` with `id/path`).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::Web;
use super::guard::Authed;
use super::render::{self, Flash};

/// Rows per page.
pub const PER_PAGE: u32 = 100;

/// The page's query.
#[derive(Debug, Deserialize)]
pub struct FolderQuery {
    /// The folder entry's id.
    id: String,
    /// The path inside it; empty for its top.
    #[serde(default)]
    path: String,
    /// Entries to skip.
    #[serde(default)]
    offset: u32,
}

/// `GET /folder?id=&path=&offset=`.
pub async fn page(
    State(web): State<Web>,
    authed: Authed,
    Query(query): Query<FolderQuery>,
) -> Response {
    let target = if query.path.is_empty() {
        query.id.clone()
    } else {
        format!("{}/{}", query.id, query.path)
    };
    match web.api.list_folder(&target, query.offset, PER_PAGE).await {
        Ok(listing) => {
            let flash = web.sessions.take_flash(&authed.session.id);
            render::folder(&authed.viewer(), flash, &listing, query.offset, PER_PAGE)
                .into_response()
        }
        Err(err) => {
            let flash = Flash::failed(tonic::Status::from(err).message().to_string());
            web.sessions.flash(&authed.session.id, flash);
            Redirect::to("/files").into_response()
        }
    }
}
