//! A followed page of the network's listing, kept current by changes: the
//! pure part of [`crate::api::AgentApi::follow_files`]. [`Page`] holds the
//! rows a viewer sees in their order and turns each change the index
//! reports (a file published, deleted or with other holders) or this
//! agent's own state moving into the [`pb::FileChange`]s that bring the
//! viewer's copy up to date, never the whole page again.
//! [`apply_change`] is the viewer's side, for a front end that keeps
//! whole lists (the older `WatchFiles` stream).

use std::cmp::Ordering;

use p2p_proto::agent::v1 as pb;
use p2p_proto::index::v1 as index_pb;
use p2p_services::manifest::fold_name;

/// The order and filters of a followed listing, and which part of it the
/// page covers.
#[derive(Debug, Clone)]
pub struct Page {
    request: pb::ListFilesRequest,
    /// The page starts at the beginning of the list: a row that sorts
    /// before every shown row belongs on it.
    first: bool,
    /// The page runs to the end of the list: a row that sorts after every
    /// shown row belongs on it.
    last: bool,
    rows: Vec<pb::NetworkFile>,
}

fn info(row: &pb::NetworkFile) -> Option<&index_pb::FileInfo> {
    row.file.as_ref()
}

fn id(row: &pb::NetworkFile) -> &str {
    info(row).map(|f| f.file_id.as_str()).unwrap_or("")
}

impl Page {
    /// The page `response` answered to `request`.
    pub fn new(request: &pb::ListFilesRequest, response: &pb::ListFilesResponse) -> Self {
        Self {
            request: request.clone(),
            first: request.page_token.trim().is_empty(),
            last: request.page_size == 0 || response.next_page_token.is_empty(),
            rows: response.files.clone(),
        }
    }

    /// The rows, in the page's order.
    pub fn rows(&self) -> &[pb::NetworkFile] {
        &self.rows
    }

    /// Whether a file passes the page's filters (name, owner, kind).
    pub fn matches(&self, file: &index_pb::FileInfo) -> bool {
        let name = fold_name(&file.name).contains(&fold_name(&self.request.name_contains));
        let owner =
            self.request.owner_name.is_empty() || self.request.owner_name == file.owner_name;
        let kind = self.request.kind.is_none_or(|k| k == file.kind);
        name && owner && kind
    }

    /// Whether a deleted file of this name may have been counted.
    pub fn may_count(&self, name: &str) -> bool {
        name.is_empty() || fold_name(name).contains(&fold_name(&self.request.name_contains))
    }

    /// How the page's sort orders two files: the index's order (key, then
    /// file id in the same direction). Holders compare the online count,
    /// the closest the agent sees to the index's recorded count.
    fn compare(&self, a: &index_pb::FileInfo, b: &index_pb::FileInfo) -> Ordering {
        let sort = index_pb::FileSort::try_from(self.request.sort)
            .unwrap_or(index_pb::FileSort::Unspecified);
        let key = match sort {
            index_pb::FileSort::Name => fold_name(&a.name).cmp(&fold_name(&b.name)),
            index_pb::FileSort::Size => a.size_bytes.cmp(&b.size_bytes),
            index_pb::FileSort::Added | index_pb::FileSort::Unspecified => {
                a.added_at_ms.cmp(&b.added_at_ms)
            }
            index_pb::FileSort::Holders => a.online_holders.cmp(&b.online_holders),
        };
        let order = key.then_with(|| a.file_id.cmp(&b.file_id));
        if self.request.descending || sort == index_pb::FileSort::Unspecified {
            order.reverse()
        } else {
            order
        }
    }

    fn remove_row(&mut self, file_id: &str) -> bool {
        let before = self.rows.len();
        self.rows.retain(|r| id(r) != file_id);
        self.rows.len() != before
    }

    /// Takes a file off the page; the change to send when it was shown.
    pub fn remove(&mut self, file_id: &str) -> Option<pb::FileChange> {
        self.remove_row(file_id).then(|| pb::FileChange {
            change: Some(pb::file_change::Change::RemovedFileId(file_id.to_string())),
            ..Default::default()
        })
    }

    /// Shows `row` as it is now: updated in place (or moved, when its
    /// sort key changed), added when it falls within the page, taken off
    /// when it no longer does. The change to send, if the viewer's copy
    /// differs.
    pub fn upsert(&mut self, row: pb::NetworkFile) -> Option<pb::FileChange> {
        let file = info(&row)?.clone();
        if let Some(shown) = self.rows.iter().find(|r| id(r) == file.file_id)
            && *shown == row
        {
            return None;
        }
        let was_shown = self.remove_row(&file.file_id);
        let at = self.rows.partition_point(|r| {
            info(r).is_some_and(|shown| self.compare(shown, &file) == Ordering::Less)
        });
        let inside =
            self.matches(&file) && (self.first || at > 0) && (self.last || at < self.rows.len());
        if !inside {
            return was_shown.then(|| pb::FileChange {
                change: Some(pb::file_change::Change::RemovedFileId(file.file_id)),
                ..Default::default()
            });
        }
        let after = at
            .checked_sub(1)
            .map(|i| id(&self.rows[i]).to_string())
            .unwrap_or_default();
        self.rows.insert(at, row.clone());
        Some(pb::FileChange {
            change: Some(pb::file_change::Change::Upsert(row)),
            after_file_id: after,
            total_count: None,
        })
    }

    /// Every row again through `view` (this agent's local state of each),
    /// with the changes for rows whose view moved.
    pub fn refresh(
        &mut self,
        view: impl Fn(index_pb::FileInfo) -> pb::NetworkFile,
    ) -> Vec<pb::FileChange> {
        let fresh: Vec<pb::NetworkFile> = self
            .rows
            .iter()
            .filter_map(|r| r.file.clone())
            .map(view)
            .collect();
        fresh.into_iter().filter_map(|r| self.upsert(r)).collect()
    }

    /// Replaces the rows with a fresh listing of the same page (after the
    /// agent lost its feed and listed again); the changes between the two.
    pub fn replace(&mut self, response: &pb::ListFilesResponse) -> Vec<pb::FileChange> {
        let fresh = Page::new(&self.request, response);
        let mut changes: Vec<pb::FileChange> = self
            .rows
            .iter()
            .filter(|old| !fresh.rows.iter().any(|r| id(r) == id(old)))
            .map(|old| pb::FileChange {
                change: Some(pb::file_change::Change::RemovedFileId(id(old).to_string())),
                ..Default::default()
            })
            .collect();
        let mut after = String::new();
        for row in &fresh.rows {
            let position = self.rows.iter().position(|r| id(r) == id(row));
            let before = position
                .and_then(|i| i.checked_sub(1))
                .map(|i| id(&self.rows[i]).to_string())
                .unwrap_or_default();
            let same = position.is_some_and(|i| self.rows[i] == *row) && before == after;
            if !same {
                changes.push(pb::FileChange {
                    change: Some(pb::file_change::Change::Upsert(row.clone())),
                    after_file_id: after.clone(),
                    total_count: None,
                });
            }
            after = id(row).to_string();
        }
        *self = fresh;
        changes
    }
}

/// Applies a change to a viewer's list of rows, as a front end does.
pub fn apply_change(rows: &mut Vec<pb::NetworkFile>, change: &pb::FileChange) {
    match &change.change {
        Some(pb::file_change::Change::Page(page)) => rows.clone_from(&page.files),
        Some(pb::file_change::Change::RemovedFileId(file_id)) => rows.retain(|r| id(r) != file_id),
        Some(pb::file_change::Change::Upsert(row)) => {
            rows.retain(|r| id(r) != id(row));
            let at = if change.after_file_id.is_empty() {
                0
            } else {
                rows.iter()
                    .position(|r| id(r) == change.after_file_id)
                    .map_or(rows.len(), |i| i + 1)
            };
            rows.insert(at, row.clone());
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str, size: u64) -> pb::NetworkFile {
        pb::NetworkFile {
            file: Some(index_pb::FileInfo {
                file_id: id.into(),
                name: name.into(),
                size_bytes: size,
                owner_name: "ann".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn by_name(page_token: &str) -> pb::ListFilesRequest {
        pb::ListFilesRequest {
            sort: index_pb::FileSort::Name as i32,
            page_size: 3,
            page_token: page_token.into(),
            ..Default::default()
        }
    }

    fn names(rows: &[pb::NetworkFile]) -> Vec<&str> {
        rows.iter()
            .map(|r| info(r).unwrap().name.as_str())
            .collect()
    }

    /// Follows `page` with a viewer's copy and checks both agree after
    /// every change.
    fn follow(page: &mut Page, viewer: &mut Vec<pb::NetworkFile>, change: Option<pb::FileChange>) {
        if let Some(change) = change {
            apply_change(viewer, &change);
        }
        assert_eq!(names(viewer), names(page.rows()));
    }

    #[test]
    fn a_new_file_is_one_added_row_in_its_place() {
        let request = by_name("");
        let response = pb::ListFilesResponse {
            files: vec![row("01", "b", 1), row("02", "d", 1), row("03", "f", 1)],
            next_page_token: "more".into(),
            total_count: None,
        };
        let mut page = Page::new(&request, &response);
        let mut viewer = response.files.clone();
        let change = page.upsert(row("04", "C", 1)).expect("inside the page");
        assert_eq!(change.after_file_id, "01");
        follow(&mut page, &mut viewer, Some(change));
        assert_eq!(names(&viewer), ["b", "C", "d", "f"]);
        assert!(
            page.upsert(row("05", "z", 1)).is_none(),
            "after the last row of a page with more: on a later page"
        );
        let top = page.upsert(row("06", "a", 1));
        assert_eq!(top.as_ref().map(|c| c.after_file_id.as_str()), Some(""));
        follow(&mut page, &mut viewer, top);
        let gone = page.remove("02");
        follow(&mut page, &mut viewer, gone);
        assert!(page.remove("99").is_none(), "not shown: nothing to send");
        assert_eq!(names(&viewer), ["a", "b", "C", "f"]);
    }

    #[test]
    fn a_later_page_takes_only_rows_between_its_ends() {
        let request = by_name("token");
        let response = pb::ListFilesResponse {
            files: vec![row("01", "m", 1), row("02", "p", 1)],
            next_page_token: String::new(),
            total_count: None,
        };
        let mut page = Page::new(&request, &response);
        assert!(
            page.upsert(row("03", "a", 1)).is_none(),
            "on an earlier page"
        );
        assert!(
            page.upsert(row("04", "z", 1)).is_some(),
            "the last page grows"
        );
    }

    #[test]
    fn filters_and_unchanged_rows_send_nothing() {
        let request = pb::ListFilesRequest {
            name_contains: "ÄR".into(),
            owner_name: "ann".into(),
            ..Default::default()
        };
        let response = pb::ListFilesResponse {
            files: vec![row("01", "ärger", 1)],
            ..Default::default()
        };
        let mut page = Page::new(&request, &response);
        assert!(page.upsert(row("01", "ärger", 1)).is_none(), "unchanged");
        assert!(page.upsert(row("02", "other", 1)).is_none(), "name filter");
        let mut bobs = row("03", "ärger 2", 1);
        bobs.file.as_mut().unwrap().owner_name = "bob".into();
        assert!(page.upsert(bobs).is_none(), "owner filter");
        let mut folder = row("04", "ärger dir", 1);
        folder.file.as_mut().unwrap().kind = index_pb::EntryKind::Folder as i32;
        let mut files_only = page.clone();
        files_only.request.kind = Some(index_pb::EntryKind::File as i32);
        assert!(files_only.upsert(folder.clone()).is_none(), "kind filter");
        assert!(page.upsert(folder).is_some());
    }

    #[test]
    fn a_fresh_listing_sends_only_the_differences() {
        let request = by_name("");
        let old = pb::ListFilesResponse {
            files: vec![row("01", "a", 1), row("02", "b", 1), row("03", "c", 1)],
            ..Default::default()
        };
        let mut page = Page::new(&request, &old);
        let mut viewer = old.files.clone();
        let new = pb::ListFilesResponse {
            files: vec![row("01", "a", 1), row("03", "c", 9), row("04", "d", 1)],
            ..Default::default()
        };
        let changes = page.replace(&new);
        assert_eq!(changes.len(), 3, "{changes:?}");
        for change in &changes {
            apply_change(&mut viewer, change);
        }
        assert_eq!(viewer, new.files);
    }
}
