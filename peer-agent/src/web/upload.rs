//! `POST /share/upload`: a file sent from the browser, streamed chunk by
//! chunk into `<data-dir>/uploads/` (never held whole in memory), renamed
//! into place only when complete, then shared like any file on this
//! machine through [`AgentApi::share`](crate::api::AgentApi::share).

use std::path::{Path, PathBuf};

use axum::extract::multipart::Field;
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
    let flash = match share_saved(&web, &authed, receive(&web, &authed, multipart).await).await {
        Shared::Refused(refused) => return refused,
        Shared::Done => return go("/files"),
        Shared::Failed(flash) => flash,
    };
    web.sessions.flash(&authed.session.id, flash);
    go("/share")
}

/// Header the page's script sets on its upload request.
const SCRIPTED_HEADER: &str = "x-p2p-scripted";
/// Header naming the page to show after a scripted upload.
const LOCATION_HEADER: &str = "x-p2p-location";

/// What became of an upload.
enum Shared {
    /// Refused before anything was written (no CSRF token).
    Refused(Response),
    /// Saved and shared; the confirmation waits in the session.
    Done,
    /// Not shared, and why.
    Failed(Flash),
}

/// Shares what an upload saved.
async fn share_saved(web: &Web, authed: &Authed, received: Result<Received, Error>) -> Shared {
    let failed = |err: Error| {
        Shared::Failed(Flash::failed(
            tonic::Status::from(err).message().to_string(),
        ))
    };
    match received {
        Ok(Received::Refused(refused)) => Shared::Refused(refused),
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
                    Shared::Done
                }
                Err(err) => failed(err),
            }
        }
        Err(err) => failed(err),
    }
}

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
                let written = async {
                    save_field(&mut field, &incoming).await?;
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

/// Streams one uploaded file into a new file at `to`, flushed.
async fn save_field(field: &mut Field<'_>, to: &Path) -> Result<(), Error> {
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| Error::io(format!("cannot create {}", to.display()), e))?;
    while let Some(chunk) = field.chunk().await.map_err(|e| {
        Error::InvalidArgument(format!("the upload was cut off ({e}); send it again"))
    })? {
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::io(format!("cannot write {}", to.display()), e))?;
    }
    file.sync_all()
        .await
        .map_err(|e| Error::io(format!("cannot write {}", to.display()), e))
}

/// `POST /share/upload-folder`: a folder picked in the browser
/// (`<input type=file webkitdirectory>`), each file's name its path in the
/// folder. The files are streamed into a hidden folder under
/// `<data-dir>/uploads/`, every path checked as a folder manifest's is
/// ([`crate::disk::folder::inside`]), at most
/// [`MAX_FOLDER_ENTRIES`](p2p_services::manifest::folder::MAX_FOLDER_ENTRIES)
/// files; the folder is renamed to a free name when all arrived, then
/// shared as one entry.
pub async fn upload_folder(
    State(web): State<Web>,
    authed: Authed,
    multipart: Multipart,
) -> Response {
    let received = receive_folder(&web, &authed, multipart).await;
    let flash = match share_saved(&web, &authed, received).await {
        Shared::Refused(refused) => return refused,
        Shared::Done => return Redirect::to("/files").into_response(),
        Shared::Failed(flash) => flash,
    };
    web.sessions.flash(&authed.session.id, flash);
    Redirect::to("/share").into_response()
}

async fn receive_folder(
    web: &Web,
    authed: &Authed,
    mut multipart: Multipart,
) -> Result<Received, Error> {
    let dir = &web.uploads_dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let incoming = dir.join(format!(".incoming-{}", uuid::Uuid::new_v4()));
    let result = receive_tree(authed, &mut multipart, &incoming).await;
    let top = match result {
        Ok(Ok(top)) => top,
        Ok(Err(refused)) => {
            let _ = tokio::fs::remove_dir_all(&incoming).await;
            return Ok(Received::Refused(refused));
        }
        Err(err) => {
            let _ = tokio::fs::remove_dir_all(&incoming).await;
            return Err(err);
        }
    };
    let path = free_path(dir, &top);
    if let Err(e) = tokio::fs::rename(&incoming, &path).await {
        let _ = tokio::fs::remove_dir_all(&incoming).await;
        return Err(Error::io(
            format!("cannot rename into {}", path.display()),
            e,
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(top);
    Ok(Received::Saved { path, name })
}

/// Writes every file of the upload under `incoming`; returns the folder's
/// name, or the refusal for a request without the session's CSRF token.
async fn receive_tree(
    authed: &Authed,
    multipart: &mut Multipart,
    incoming: &Path,
) -> Result<Result<String, Response>, Error> {
    let cut = |e: axum::extract::multipart::MultipartError| {
        Error::InvalidArgument(format!("the upload was cut off ({e}); send it again"))
    };
    let mut csrf_ok = false;
    let mut top: Option<String> = None;
    let mut files = 0usize;
    tokio::fs::create_dir(incoming)
        .await
        .map_err(|e| Error::io(format!("cannot create {}", incoming.display()), e))?;
    while let Some(mut field) = multipart.next_field().await.map_err(cut)? {
        match field.name() {
            Some("csrf") => {
                let token = field.text().await.map_err(cut)?;
                if let Err(refused) = authed.check_csrf(&token) {
                    return Ok(Err(refused.into_response()));
                }
                csrf_ok = true;
            }
            Some("file") => {
                if !csrf_ok {
                    return Ok(Err(Refusal::Csrf.into_response()));
                }
                let raw = field.file_name().unwrap_or_default().to_string();
                let Some((first, inner)) = raw.split_once('/') else {
                    return Err(Error::InvalidArgument(format!(
                        "{raw:?} is not inside a folder; pick a folder, or upload single files above"
                    )));
                };
                validate_name(first)?;
                if top.get_or_insert_with(|| first.to_string()) != first {
                    return Err(Error::InvalidArgument(
                        "the upload holds more than one folder; pick one folder".into(),
                    ));
                }
                files += 1;
                if files > p2p_services::manifest::folder::MAX_FOLDER_ENTRIES {
                    return Err(Error::InvalidArgument(
                        "the folder holds more than 100000 files; share a smaller one".into(),
                    ));
                }
                let to = crate::disk::folder::inside(incoming, inner)?;
                if let Some(parent) = to.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
                }
                if tokio::fs::try_exists(&to).await.unwrap_or(true) {
                    return Err(Error::InvalidArgument(format!(
                        "the upload holds {inner:?} twice"
                    )));
                }
                save_field(&mut field, &to).await?;
            }
            _ => {}
        }
    }
    top.map(Ok)
        .ok_or_else(|| Error::InvalidArgument("choose a folder to upload".into()))
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
