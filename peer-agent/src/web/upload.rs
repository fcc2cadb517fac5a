//! `POST /share/upload`: a file sent from the browser, streamed chunk by
//! chunk into `<data-dir>/uploads/` (never held whole in memory), renamed
//! into place only when complete, then shared like any file on this
//! machine through [`AgentApi::share`](crate::api::AgentApi::share).

use std::path::{Path, PathBuf};

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use p2p_services::manifest::validate_name;
use tokio::io::AsyncWriteExt;

use super::Web;
use super::guard::{Authed, Refusal};
use super::pages::shared_flash;
use super::render::Flash;
use crate::api::ShareOptions;
use crate::error::Error;

/// Receives the upload, then shares it; failures come back to the Share
/// page with what to do.
pub async fn upload(
    State(web): State<Web>,
    authed: Authed,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    // The page's script sends the form itself to show progress; it gets
    // the next page's address rather than a redirect its request would
    // follow (and so take the one-time message meant for the user).
    let scripted = headers.contains_key(SCRIPTED_HEADER);
    let go = |to: &'static str| {
        if scripted {
            ([(LOCATION_HEADER, to)], StatusCode::NO_CONTENT).into_response()
        } else {
            Redirect::to(to).into_response()
        }
    };
    let flash = match receive(&web, &authed, multipart).await {
        Ok(Received::Refused(refused)) => return refused,
        Ok(Received::Saved { path, name }) => {
            let options = ShareOptions {
                path: path.to_string_lossy().into_owned(),
                name,
                mime_type: String::new(),
                replace: false,
            };
            match web.share(options).await {
                Ok(shared) => {
                    web.sessions
                        .flash(&authed.session.id, shared_flash(&shared));
                    return go("/files");
                }
                Err(err) => Flash::failed(tonic::Status::from(err).message().to_string()),
            }
        }
        Err(err) => Flash::failed(tonic::Status::from(err).message().to_string()),
    };
    web.sessions.flash(&authed.session.id, flash);
    go("/share")
}

/// Header the page's script sets on its upload request.
const SCRIPTED_HEADER: &str = "x-p2p-scripted";
/// Header naming the page to show after a scripted upload.
const LOCATION_HEADER: &str = "x-p2p-location";

enum Received {
    Refused(Response),
    Saved { path: PathBuf, name: String },
}

async fn receive(web: &Web, authed: &Authed, mut multipart: Multipart) -> Result<Received, Error> {
    let bad = |what: String| Error::InvalidArgument(what);
    let mut csrf_ok = false;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("the upload was cut off ({e}); send it again")))?
    {
        match field.name() {
            Some("csrf") => {
                let token = field
                    .text()
                    .await
                    .map_err(|e| bad(format!("the upload was cut off ({e}); send it again")))?;
                if let Err(refused) = authed.check_csrf(&token) {
                    return Ok(Received::Refused(refused.into_response()));
                }
                csrf_ok = true;
            }
            Some("file") => {
                if !csrf_ok {
                    // The token must come first, so nothing is written for
                    // a forged request.
                    return Ok(Received::Refused(Refusal::Csrf.into_response()));
                }
                let name = field
                    .file_name()
                    .and_then(|n| Path::new(n).file_name())
                    .map(|n| n.to_string_lossy().trim().to_string())
                    .unwrap_or_default();
                if name.is_empty() {
                    return Err(bad("choose a file to upload".into()));
                }
                validate_name(&name)?;
                let dir = &web.uploads_dir;
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
                let incoming = dir.join(format!(".incoming-{}", uuid::Uuid::new_v4()));
                let written =
                    async {
                        let mut file = tokio::fs::File::create(&incoming).await.map_err(|e| {
                            Error::io(format!("cannot create {}", incoming.display()), e)
                        })?;
                        while let Some(chunk) = field.chunk().await.map_err(|e| {
                            bad(format!("the upload was cut off ({e}); send it again"))
                        })? {
                            file.write_all(&chunk).await.map_err(|e| {
                                Error::io(format!("cannot write {}", incoming.display()), e)
                            })?;
                        }
                        file.sync_all().await.map_err(|e| {
                            Error::io(format!("cannot write {}", incoming.display()), e)
                        })?;
                        let path = free_path(dir, &name);
                        tokio::fs::rename(&incoming, &path).await.map_err(|e| {
                            Error::io(format!("cannot rename into {}", path.display()), e)
                        })?;
                        Ok::<_, Error>(path)
                    }
                    .await;
                return match written {
                    Ok(path) => Ok(Received::Saved { path, name }),
                    Err(err) => {
                        let _ = tokio::fs::remove_file(&incoming).await;
                        Err(err)
                    }
                };
            }
            _ => {}
        }
    }
    Err(bad("choose a file to upload".into()))
}

/// `dir/name`, or `dir/name (2)`, `(3)`... when taken: an upload never
/// replaces a file already there.
fn free_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (name, String::new()),
    };
    (2..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_never_replace_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(free_path(dir.path(), "a.txt"), dir.path().join("a.txt"));
        std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
        assert_eq!(free_path(dir.path(), "a.txt"), dir.path().join("a (2).txt"));
        std::fs::write(dir.path().join("a (2).txt"), b"x").unwrap();
        assert_eq!(free_path(dir.path(), "a.txt"), dir.path().join("a (3).txt"));
    }
}
