// gitorch dashboard: live updates and confirmations. Hand-written, no dependencies.
// Without JavaScript every page still works: it is rendered by the daemon, and actions
// go through a confirmation page.
(function () {
  "use strict";

  function confirmActions(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.bound) return;
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  var refreshing = false;
  var pending = false;

  function refresh() {
    if (refreshing) { pending = true; return; }
    refreshing = true;
    fetch(window.location.href, { headers: { "X-Fragment": "1" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected || !response.ok) return null;
        return response.text();
      })
      .then(function (html) {
        var main = document.getElementById("main");
        var active = document.activeElement;
        // Never swap the page under someone typing (the plan's ref field).
        var typing = active && active.tagName === "INPUT" && main && main.contains(active);
        if (html !== null && main && !typing) {
          main.innerHTML = html;
          confirmActions(main);
          document.body.dataset.updated = String(Date.now());
        }
      })
      .catch(function () { /* the next event tries again */ })
      .finally(function () {
        refreshing = false;
        if (pending) { pending = false; refresh(); }
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmActions(document);
    var main = document.getElementById("main");
    if (!main || !main.dataset.live || !window.EventSource) return;
    var events = new EventSource("/events");
    events.addEventListener("change", refresh);
    events.addEventListener("open", function () { document.body.dataset.live = "connected"; });
  });
})();
