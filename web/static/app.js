// Minimal client: post a prompt, follow the turn's SSE stream, show each event as it arrives.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);

  function addLine(text, cls) {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    $("events").appendChild(li);
  }

  async function demoToken() {
    const res = await fetch("/api/dev/token", { method: "POST" });
    const body = await res.json();
    $("token").value = body.token;
  }

  function follow(streamUrl) {
    const source = new EventSource(streamUrl);
    source.onopen = () => { $("connection").textContent = "connected"; };
    source.onerror = () => { $("connection").textContent = "reconnecting…"; };
    source.addEventListener("step", (e) => {
      const d = JSON.parse(e.data);
      addLine(d.status === "finished" ? `${d.step} finished in ${Math.round(d.duration_ms)} ms` : `${d.step}…`);
    });
    source.addEventListener("tool", (e) => {
      const d = JSON.parse(e.data);
      addLine(`tool ${d.tool}(${JSON.stringify(d.args)}) → ${d.status} in ${Math.round(d.duration_ms)} ms`);
    });
    source.addEventListener("token", (e) => { $("answer").textContent += JSON.parse(e.data).text; });
    source.addEventListener("done", (e) => {
      $("answer").textContent = JSON.parse(e.data).answer;
      $("connection").textContent = "done";
      source.close();
    });
    for (const kind of ["error", "cancelled"]) {
      source.addEventListener(kind, (e) => {
        if (!e.data) return;  // a transport error, not our event
        addLine(`${kind}: ${JSON.parse(e.data).message}`, "error");
        $("connection").textContent = kind;
        source.close();
      });
    }
  }

  async function send(event) {
    event.preventDefault();
    $("events").textContent = "";
    $("answer").textContent = "";
    const sessionId = sessionStorage.getItem("session") || crypto.randomUUID().replaceAll("-", "");
    sessionStorage.setItem("session", sessionId);
    const res = await fetch(`/api/sessions/${sessionId}/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": `Bearer ${$("token").value}` },
      body: JSON.stringify({ prompt: $("prompt").value }),
    });
    const body = await res.json();
    if (!res.ok) { addLine(`${res.status}: ${body.message}`, "error"); return; }
    follow(body.stream_url);
  }

  $("prompt-form").addEventListener("submit", send);
  const demo = $("demo-token");
  if (demo) demo.addEventListener("click", demoToken);
})();
