/* Helpers shared by the pages: formatting and reading the JSON API's answers. */
"use strict";

window.covidscan = (function () {
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

  /** "1.5 MiB" for 1572864: binary units, as the server states its limits. */
  function formatBytes(bytes) {
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < UNITS.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 2 : 1)) + " " + UNITS[unit];
  }

  /** "1 h 02 min", "3 min 07 s" or "12 s" for a number of seconds. */
  function formatDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    if (h > 0) return h + " h " + pad(m) + " min";
    if (m > 0) return m + " min " + pad(s % 60) + " s";
    return s + " s";
  }

  /** The human message of an error answer: problem+json's detail, else the status line. */
  function problemDetail(status, text) {
    try {
      const body = JSON.parse(text);
      if (body && body.detail) return { detail: body.detail, body: body };
    } catch (ignored) {
      /* not JSON: fall through to the status line */
    }
    return { detail: "the server answered " + status, body: {} };
  }

  /** Clear an element and append one text child per item, built by make(item). */
  function replaceChildren(element, items, make) {
    const fragment = document.createDocumentFragment();
    items.forEach((item) => fragment.appendChild(make(item)));
    element.replaceChildren(fragment);
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  /** The signed-in page's CSRF token: send it (header X-CSRF-Token) with every request
   *  that changes something (POST, PUT, PATCH, DELETE). */
  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  /** Headers for a state-changing request: Accept JSON, and the CSRF token. */
  function unsafeHeaders() {
    return { Accept: "application/json", "X-CSRF-Token": csrfToken() };
  }

  /** After a 401 (the session ended or the key was revoked): sign in again, then come back. */
  function signInAgain() {
    window.location.assign("/login?next=" +
                           encodeURIComponent(window.location.pathname + window.location.search));
  }

  /** The API's states as the server spells them (covidscan/contract.py; api/web.py puts
   *  them on every page as <html data-contract>): compare with contract.ScanStatus.FAILED. */
  const contract = JSON.parse(document.documentElement.dataset.contract);

  return { contract, formatBytes, formatDuration, problemDetail, replaceChildren, element,
           csrfToken, unsafeHeaders, signInAgain };
})();
