/* The upload page: collect files (pickers, a folder, drag and drop), send them to
   POST /v1/jobs with byte progress (a large selection as parts of an open job, sealed at
   the end), then go to the job's page. */
"use strict";

(function () {
  const { formatBytes, problemDetail, replaceChildren, element, unsafeHeaders } = window.covidscan;
  const $ = (id) => document.getElementById(id);
  const form = $("upload-form");
  // DICOM files often have no extension (IM000001): the server tells them apart by content.
  const SENDABLE = /(\.(png|jpe?g|zip|dcm|dicom)|(^|\/)[^./]+)$/i;
  const LIST_LIMIT = 200;
  const maxUploadBytes = Number(form.dataset.maxUploadBytes);

  let selected = [];   // [{file, name}] in the order they were added
  let leftOut = [];    // names found in folders that are not PNG, JPEG, DICOM or ZIP
  let rejectedName = null;

  function add(file, name, fromFolder) {
    if (fromFolder && !SENDABLE.test(name)) {
      leftOut.push(name);
      return;
    }
    const duplicate = selected.some((s) => s.name === name && s.file.size === file.size &&
                                           s.file.lastModified === file.lastModified);
    if (!duplicate) selected.push({ file: file, name: name });
  }

  function totalBytes() {
    return selected.reduce((sum, s) => sum + s.file.size, 0);
  }

  function render() {
    const count = selected.length;
    $("selection-summary").textContent = count === 0 ? "Nothing selected yet." :
      count + (count === 1 ? " file, " : " files, ") + formatBytes(totalBytes()) + ".";
    const shown = selected.slice(0, LIST_LIMIT);
    replaceChildren($("selected"), shown, (s) =>
      element("li", s.name + " (" + formatBytes(s.file.size) + ")"));
    if (count > LIST_LIMIT) {
      $("selected").appendChild(element("li", "… and " + (count - LIST_LIMIT) + " more", "hint"));
    }
    const note = $("left-out");
    note.hidden = leftOut.length === 0;
    note.textContent = leftOut.length === 0 ? "" : "Not sent from the folder (not .png, .jpg, " +
      ".jpeg, .dcm, .zip or without extension): " + leftOut.slice(0, 20).join(", ") + (leftOut.length > 20 ? ", …" : "");
    $("submit").disabled = count === 0;
    $("clear").disabled = count === 0 && leftOut.length === 0;
  }

  function fromInput(input, fromFolder) {
    Array.from(input.files).forEach((file) =>
      add(file, fromFolder && file.webkitRelativePath ? file.webkitRelativePath : file.name,
          fromFolder));
    input.value = "";
    hideError();
    render();
  }

  /* Drag and drop: folders arrive as directory entries, read recursively. */
  function readEntry(entry, path) {
    if (entry.isFile) {
      return new Promise((resolve) => entry.file((file) => {
        add(file, path + file.name, path !== "");
        resolve();
      }, () => resolve()));
    }
    const reader = entry.createReader();
    const children = [];
    return new Promise((resolve) => {
      const readBatch = () => reader.readEntries((batch) => {
        if (batch.length === 0) {
          Promise.all(children.map((c) => readEntry(c, path + entry.name + "/"))).then(resolve);
          return;
        }
        children.push(...batch);
        readBatch();  // readEntries hands back at most about a hundred entries per call
      }, () => resolve());
      readBatch();
    });
  }

  function onDrop(event) {
    event.preventDefault();
    $("drop-zone").classList.remove("dragging");
    const items = Array.from(event.dataTransfer.items || []);
    const entries = items.map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
      .filter(Boolean);
    const done = entries.length > 0 ?
      Promise.all(entries.map((entry) => readEntry(entry, ""))) :
      Promise.resolve(Array.from(event.dataTransfer.files).forEach((f) => add(f, f.name, false)));
    done.then(() => { hideError(); render(); });
  }

  function hideError() {
    $("upload-error").hidden = true;
    rejectedName = null;
  }

  function showError(message, rejected) {
    $("upload-error-text").textContent = message;
    replaceChildren($("rejected"), rejected, (r) => {
      const item = element("li");
      item.appendChild(element("strong", r.filename));
      item.appendChild(document.createTextNode(": " + r.reason));
      return item;
    });
    $("drop-rejected").hidden = !rejectedName;
    $("upload-error").hidden = false;
    $("upload-status").hidden = true;
    setBusy(false);
  }

  function setBusy(busy) {
    ["submit", "clear", "files", "folder", "job-name", "model"].forEach((id) => {
      $(id).disabled = busy;
    });
    if (!busy) render();
  }

  /* What became of the parts an upload refused part-way had already sent. */
  function fate(kept) {
    return kept ?
      " The parts sent before were kept as job " + kept + ", which could not be deleted: " +
      "delete it with `covidscan delete " + kept + "` (DELETE /v1/jobs/" + kept + ")." :
      "";
  }

  function onRejected(status, text, kept) {
    if (status === 401) {
      window.covidscan.signInAgain();
      return;
    }
    const { detail, body } = problemDetail(status, text);
    const rejected = (body.skipped || []).slice();
    if (body.filename) {
      rejected.unshift({ filename: body.filename, reason: detail });
      // Only a file picked on its own can be dropped from the selection, not a ZIP entry.
      if (selected.some((s) => s.name === body.filename)) rejectedName = body.filename;
    }
    showError(kept ? "The server did not accept this upload: " + detail + "." + fate(kept) :
      "The server did not accept this upload (nothing was stored): " + detail, rejected);
  }

  function onAccepted(text) {
    const job = JSON.parse(text);
    if (job.skipped && job.skipped.length) {
      try {
        sessionStorage.setItem("covidscan-skipped-" + job.id, JSON.stringify(job.skipped));
      } catch (ignored) {
        /* storage full or disabled: the job page simply shows no skipped list */
      }
    }
    window.location.assign("/jobs/" + encodeURIComponent(job.id));
  }

  /* The selection in request-sized parts, in order: at most PART_FILES files and, unless
     one file is larger, PART_BYTES bytes each. More than one part goes as an open job. */
  const PART_FILES = 64;
  const PART_BYTES = Math.min(32 * 1024 * 1024, maxUploadBytes);

  function parts() {
    const out = [[]];
    let size = 0;
    selected.forEach((s) => {
      const last = out[out.length - 1];
      if (last.length > 0 && (last.length >= PART_FILES || size + s.file.size > PART_BYTES)) {
        out.push([]);
        size = 0;
      }
      out[out.length - 1].push(s);
      size += s.file.size;
    });
    return out;
  }

  /* POST a form with byte progress; resolves to {status, text}, rejects on a network error. */
  function send(url, data, onProgress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", url);
      Object.entries(unsafeHeaders()).forEach(([name, value]) => request.setRequestHeader(name, value));
      request.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) onProgress(e.loaded, e.total);
      });
      request.addEventListener("load", () => resolve({ status: request.status, text: request.responseText }));
      request.addEventListener("error", () => reject(new Error("network")));
      request.send(data);
    });
  }

  function showProgress(loaded, total) {
    $("upload-progress").value = Math.round((100 * loaded) / total);
    $("upload-bytes").textContent = formatBytes(loaded) + " of " + formatBytes(total) + " sent";
  }

  function formOf(files, fields) {
    const data = new FormData();
    Object.entries(fields).forEach(([name, value]) => data.append(name, value));
    files.forEach((s) => data.append("files", s.file, s.name));
    return data;
  }

  /* Delete an open job whose part was refused: an upload is taken whole or not at all.
     A busy or unreachable server is asked again twice; resolves to whether the job is gone
     (if not, the sweep seals what it holds after OPEN_JOB_TIMEOUT, and the user is told). */
  async function discard(jobId) {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      if (attempt) await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
      try {
        const answer = await fetch("/v1/jobs/" + encodeURIComponent(jobId),
                                   { method: "DELETE", headers: unsafeHeaders() });
        if (answer.ok || answer.status === 404) return true;
        if (answer.status < 500) return false;
      } catch (ignored) {
        /* network error: ask again */
      }
    }
    return false;
  }

  async function sendInParts(pieces, fields) {
    const total = totalBytes();
    let before = 0;
    let job = null;
    for (let i = 0; i < pieces.length; i += 1) {
      const piece = pieces[i];
      const bytes = piece.reduce((sum, s) => sum + s.file.size, 0);
      const url = job ? "/v1/jobs/" + encodeURIComponent(job.id) + "/scans" : "/v1/jobs";
      let answer;
      try {
        answer = await send(url, formOf(piece, job ? {} : Object.assign({ open: "true" }, fields)),
          (loaded, requestTotal) => showProgress(before + bytes * loaded / requestTotal, total));
      } catch (error) {
        if (job && !(await discard(job.id))) error.kept = job.id;
        throw error;
      }
      if (answer.status !== 202) {
        if (job && !(await discard(job.id))) answer.kept = job.id;
        return answer;
      }
      const body = JSON.parse(answer.text);
      job = job || body;
      job.skipped = i === 0 ? body.skipped : (job.skipped || []).concat(body.skipped || []);
      before += bytes;
    }
    $("upload-bytes").textContent = "All bytes sent; the server is sealing the job…";
    const sealed = await fetch("/v1/jobs/" + encodeURIComponent(job.id) + "/seal",
                               { method: "POST", headers: unsafeHeaders() });
    if (!sealed.ok) return { status: sealed.status, text: await sealed.text() };
    return { status: 202, text: JSON.stringify(Object.assign(await sealed.json(), { skipped: job.skipped })) };
  }

  function upload(event) {
    event.preventDefault();
    if (selected.length === 0) return;
    hideError();
    const tooLarge = selected.find((s) => s.file.size > maxUploadBytes);
    if (tooLarge) {
      showError(tooLarge.name + " is " + formatBytes(tooLarge.file.size) + ", over the server's " +
        "limit of " + formatBytes(maxUploadBytes) + " per request (MAX_UPLOAD_BYTES).", []);
      return;
    }
    const fields = {};
    const name = $("job-name").value.trim();
    if (name) fields.name = name;
    if (!$("model-field").hidden && $("model").value) fields.model = $("model").value;
    const pieces = parts();
    setBusy(true);
    $("upload-progress").value = 0;
    $("upload-bytes").textContent = "0 B of " + formatBytes(totalBytes()) + " sent";
    $("upload-status").hidden = false;
    const sent = pieces.length === 1 ?
      send("/v1/jobs", formOf(pieces[0], fields), (loaded, total) => {
        showProgress(loaded, total);
        if (loaded === total) {
          $("upload-bytes").textContent = "All bytes sent; the server is storing the scans…";
        }
      }) :
      sendInParts(pieces, fields);
    sent.then((answer) => {
      if (answer.status === 202) onAccepted(answer.text);
      else onRejected(answer.status, answer.text, answer.kept);
    }, (error) => showError(error.kept ?
      "The upload did not reach the server (network error)." + fate(error.kept) :
      "The upload did not reach the server (network error). Nothing was stored; try again.", []));
  }

  /* Offer a model choice only when the server lists more than one. */
  function loadModels() {
    fetch("/v1/models", { headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : null))
      .then((body) => {
        const models = body && (Array.isArray(body) ? body : body.models);
        if (!Array.isArray(models) || models.length < 2) return;
        replaceChildren($("model"), models, (m) => {
          const value = typeof m === "string" ? m : (m.version ? `${m.name}:${m.version}` : m.name);
          const option = element("option", value + (m.trained === false ? " (untrained)" : ""));
          option.value = value;
          if (m.default) option.selected = true;
          return option;
        });
        $("model-field").hidden = false;
      })
      .catch(() => { /* no model list: the server's default model is used */ });
  }

  $("files").addEventListener("change", () => fromInput($("files"), false));
  $("folder").addEventListener("change", () => fromInput($("folder"), true));
  $("clear").addEventListener("click", () => { selected = []; leftOut = []; hideError(); render(); });
  $("drop-rejected").addEventListener("click", () => {
    selected = selected.filter((s) => s.name !== rejectedName);
    hideError();
    render();
    if (selected.length > 0) upload(new Event("submit"));
  });
  const zone = $("drop-zone");
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  }));
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", onDrop);
  form.addEventListener("submit", upload);
  loadModels();
  render();
})();
