// The worklist's live rows: ask the node every few seconds whether anything new was
// recorded (an event after the last one shown) and, if so, replace the table's rows
// with the server-rendered ones for the same filters. Nothing else on the console
// needs a script.
(function () {
  "use strict";
  var rows = document.getElementById("worklist-rows");
  if (!rows) return;
  var status = document.getElementById("live");
  var toggle = document.getElementById("live-on");
  var every = parseInt(rows.getAttribute("data-poll"), 10) || 2000;
  var timer = null;

  function say(text) {
    if (status && status.textContent !== text) status.textContent = text;
  }

  function check() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "rows");
    url.searchParams.set("after", rows.getAttribute("data-last-event") || "0");
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 200) {
          var last = r.headers.get("X-Last-Event");
          return r.text().then(function (html) {
            rows.innerHTML = html;
            if (last) rows.setAttribute("data-last-event", last);
            say("Live: updated at " + new Date().toLocaleTimeString());
          });
        }
        if (r.status !== 204) say("Live updates paused: the node answered " + r.status + ".");
      })
      .catch(function () {
        say("Live updates paused: the node does not answer. Retrying.");
      })
      .then(schedule);
  }

  function schedule() {
    clearTimeout(timer);
    if (!toggle || toggle.checked) timer = setTimeout(check, every);
  }

  if (toggle) {
    toggle.addEventListener("change", function () {
      say(toggle.checked ? "Live updates on." : "Live updates off.");
      if (toggle.checked) check(); else clearTimeout(timer);
    });
  }
  schedule();
})();
