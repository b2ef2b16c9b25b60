// The dashboard's only script (no library, no build step). Two things:
// 1. auto-refresh: every element with data-refresh="N" is replaced every N seconds by the
//    same element of a fresh copy of the page (fetched same-origin, with the session cookie);
//    paused while the tab is hidden or the "auto-refresh" box is unchecked.
// 2. a form with data-confirm asks before it is sent.
// Both only move server-rendered, escaped HTML around; no data is turned into markup here.
(function () {
  "use strict";

  function enabled() {
    var box = document.getElementById("auto-refresh");
    return !document.hidden && (!box || box.checked);
  }

  function refresh(el) {
    if (!enabled()) return Promise.resolve();
    return fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        // A session that ended sends us to the login page: follow it, rather than swap it in.
        if (r.redirected && r.url.indexOf("/dashboard/login") !== -1) { window.location = r.url; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(el.id);
        if (fresh) {
          // Keep open attempts open: the <details> a reader opened stays open.
          var open = Array.prototype.map.call(el.querySelectorAll("details[open]"), function (d) { return d.id; });
          el.replaceWith(fresh);
          open.forEach(function (id) { var d = id && document.getElementById(id); if (d) d.open = true; });
          schedule(fresh);
        }
      })
      .catch(function () { schedule(el); });  // the server is restarting: try again later
  }

  function schedule(el) {
    var seconds = parseInt(el.getAttribute("data-refresh"), 10);
    if (seconds > 0) window.setTimeout(function () { if (el.isConnected) refresh(el); }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(schedule);
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
