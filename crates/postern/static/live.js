// The console dashboard's live refresh: every 10 seconds the page is fetched again (same origin,
// same session cookie) and its #live part replaced. No data is built here: the server renders
// everything, as for a reload. It pauses while the keyboard focus is inside that part (so a
// button being reached is not replaced under the user) and stops when the session has ended.
"use strict";
(function () {
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!live) return;
  async function refresh() {
    if (live.contains(document.activeElement) && document.activeElement !== document.body) return;
    try {
      const r = await fetch(window.location.pathname, { credentials: "same-origin", cache: "no-store" });
      if (r.redirected || !r.ok) {
        if (status) status.textContent = "Live refresh stopped: sign in again.";
        clearInterval(timer);
        return;
      }
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const next = doc.getElementById("live");
      if (next) {
        live.replaceChildren(...Array.from(next.childNodes).map((n) => document.importNode(n, true)));
        live.dataset.refreshedAt = new Date().toISOString();
        if (status) status.textContent = "Live: refreshed at " + new Date().toLocaleTimeString() + ".";
      }
    } catch (e) {
      if (status) status.textContent = "Live refresh failed; retrying.";
    }
  }
  const timer = setInterval(refresh, 10000);
})();
