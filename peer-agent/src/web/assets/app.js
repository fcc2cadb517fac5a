// P2P File Transfer web app: live updates and upload progress. The pages
// work without this script; it only keeps them current.
"use strict";

// Elements with data-live="/events/..." get their content replaced by the
// HTML each "html" event carries (rendered and escaped by the agent).
function followLive(element) {
  const note = document.querySelector(".live-note");
  const source = new EventSource(element.dataset.live);
  // A browser keeps at most six connections to the agent: a page being
  // left (or kept in the back-forward cache) gives its feed's back at once.
  window.addEventListener("pagehide", () => source.close());
  // A form being submitted must not be replaced under the browser's feet.
  let submitting = false;
  element.addEventListener("submit", () => {
    submitting = true;
    source.close();
  });
  source.addEventListener("html", (event) => {
    if (submitting) return;
    const focused = document.activeElement && document.activeElement.closest("form");
    const focusKey = focused ? focused.action + "|" + (focused.querySelector("[name=file]") || {}).value : null;
    element.innerHTML = event.data;
    if (focusKey) {
      for (const form of element.querySelectorAll("form")) {
        const key = form.action + "|" + (form.querySelector("[name=file]") || {}).value;
        if (key === focusKey) {
          const button = form.querySelector("button");
          if (button) button.focus();
        }
      }
    }
    if (note) note.textContent = "Updates live.";
  });
  // Row by row (the Files page): a "row" event carries one row, added,
  // updated or moved after the row its data-after names; "remove" names a
  // row to take away; "total" is the new count of matches.
  const rowIn = (id) => id ? element.querySelector('tr[data-file-id="' + CSS.escape(id) + '"]') : null;
  source.addEventListener("row", (event) => {
    if (submitting) return;
    const template = document.createElement("template");
    template.innerHTML = event.data;
    const row = template.content.querySelector("tr[data-file-id]");
    if (!row) return;
    const old = rowIn(row.dataset.fileId);
    if (old && old.contains(document.activeElement)) {
      // Keep the row the user is working in; update its cells only.
      old.querySelectorAll("td:not(.actions)").forEach((cell, i) => {
        const fresh = row.querySelectorAll("td:not(.actions)")[i];
        if (fresh) cell.replaceWith(fresh.cloneNode(true));
      });
      return;
    }
    if (old) old.remove();
    element.querySelectorAll("tr.empty").forEach((r) => r.remove());
    const after = rowIn(row.dataset.after);
    delete row.dataset.after;
    if (after) after.after(row);
    else element.prepend(row);
    if (note) note.textContent = "Updates live.";
  });
  source.addEventListener("remove", (event) => {
    if (submitting) return;
    const old = rowIn(event.data);
    if (old) old.remove();
  });
  source.addEventListener("total", (event) => {
    const total = document.getElementById("files-total");
    if (total) total.textContent = event.data;
  });
  source.addEventListener("ended", () => {
    source.close();
    if (note) note.textContent = "Your session ended: reload the page to log in again.";
  });
  source.onerror = () => {
    if (note) note.textContent = "Reconnecting to the agent…";
  };
}

// The upload form reports how much has been sent, then waits for the agent
// to hash and publish the file.
function uploadWithProgress(form) {
  const bar = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("x-p2p-scripted", "1");
    bar.hidden = false;
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        const percent = Math.floor((e.loaded * 100) / e.total);
        bar.value = percent;
        text.textContent = " Sending: " + percent + " %";
      }
    });
    request.upload.addEventListener("load", () => {
      bar.value = 100;
      text.textContent = " Sent. Hashing and publishing…";
    });
    request.addEventListener("load", () => {
      if (request.status >= 400) {
        bar.hidden = true;
        form.querySelector("button[type=submit]").disabled = false;
        text.textContent = " The agent refused the upload (HTTP " + request.status +
          "): reload the page and try again.";
        return;
      }
      window.location.assign(request.getResponseHeader("x-p2p-location") || "/files");
    });
    request.addEventListener("error", () => {
      text.textContent = " The upload failed: check that the agent still runs, then try again.";
    });
    form.querySelector("button[type=submit]").disabled = true;
    request.send(new FormData(form));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(followLive);
  const upload = document.getElementById("upload");
  if (upload) uploadWithProgress(upload);
});
