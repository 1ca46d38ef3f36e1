// The admin run page's "follow" panel: what a running command step prints, line by
// line, from GET runs/{id}/steps/{state}/output/?follow=1 (Server-Sent Events). The
// panel sits outside #content-main, which live.js swaps on each checkpoint: after each
// swap the page is looked at again, and the next running step is followed once the
// current one has ended.
(function () {
  "use strict";
  var panel = document.getElementById("wf-follow");
  if (!panel || !window.EventSource) {
    return;
  }
  var nameEl = panel.querySelector(".wf-follow-step");
  var statusEl = panel.querySelector(".wf-follow-status");
  var output = panel.querySelector(".wf-follow-output");
  var source = null;
  var followed = {};

  function start(url, name) {
    followed[url] = true;
    panel.hidden = false;
    nameEl.textContent = name;
    statusEl.textContent = "running";
    statusEl.className = "wf-badge wf-badge-running wf-follow-status";
    output.textContent = "";
    source = new EventSource(url + "?follow=1");
    // A reconnection (or a retry) starts over from the attempt's first line.
    source.addEventListener("open", function () {
      output.textContent = "";
    });
    source.addEventListener("attempt", function () {
      output.textContent = "";
    });
    source.addEventListener("output", function (event) {
      var atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.appendChild(document.createTextNode(JSON.parse(event.data).text));
      if (atBottom) {
        output.scrollTop = output.scrollHeight;
      }
    });
    source.addEventListener("end", function (event) {
      var status = JSON.parse(event.data).status;
      source.close();
      source = null;
      statusEl.textContent = status;
      statusEl.className = "wf-badge wf-badge-" + status + " wf-follow-status";
      pick();
    });
    source.addEventListener("error", function () {
      // A 4xx (no such state any more): stop; EventSource retries by itself otherwise.
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
      }
    });
  }

  function pick() {
    if (source) {
      return;
    }
    var steps = document.querySelectorAll("#content-main.wf-run [data-output-url]");
    for (var i = 0; i < steps.length; i++) {
      var url = steps[i].getAttribute("data-output-url");
      if (!followed[url]) {
        start(url, steps[i].getAttribute("data-step"));
        return;
      }
    }
  }

  pick();
  var main = document.getElementById("content-main");
  if (main && main.parentNode && window.MutationObserver) {
    new MutationObserver(pick).observe(main.parentNode, { childList: true });
  }
})();
