// The admin run page follows its run: on each checkpoint of the run's event stream
// (GET runs/{id}/events/), the page's content is fetched again and swapped in place,
// so the status, graph, timeline, steps and history move with no reload.
(function () {
  "use strict";
  var root = document.querySelector("#content-main.wf-run[data-events-url]");
  if (!root || !window.EventSource || !window.fetch || !window.DOMParser) {
    return;
  }
  var source = new EventSource(root.getAttribute("data-events-url"));
  var busy = false;
  var again = false;

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    var current = document.querySelector("#content-main.wf-run");
    // Never swap a form from under someone using it: try at the next event.
    if (current && current.contains(document.activeElement) && document.activeElement !== document.body) {
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (!html) {
          return;
        }
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("#content-main.wf-run");
        var now = document.querySelector("#content-main.wf-run");
        if (fresh && now) {
          now.replaceWith(document.importNode(fresh, true));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  source.addEventListener("checkpoint", refresh);
  source.addEventListener("end", function () {
    source.close();
    refresh();
  });
})();
