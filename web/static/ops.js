// /ops: replace the panels with each server-rendered snapshot from /ops/stream.
(function () {
  "use strict";
  const panels = document.getElementById("panels");
  const status = document.getElementById("live");
  // The page was opened with ?token=; keep it out of the history and the address bar.
  if (window.location.search) window.history.replaceState(null, "", window.location.pathname);
  const source = new EventSource(panels.dataset.stream);
  source.onopen = () => { status.textContent = "live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; };
  source.addEventListener("snapshot", (e) => {
    panels.innerHTML = e.data;
    status.textContent = "live, updated " + new Date().toLocaleTimeString();
  });
  source.addEventListener("expired", (e) => {
    status.textContent = e.data;
    source.close();
  });
})();
