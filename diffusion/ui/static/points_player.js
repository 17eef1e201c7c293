// Plays particle trajectories in the browser: the frames come once, as the component's
// value (JSON), and Play / the slider move through them without asking the server.
// value: {"panels": [{"title", "color", "frames": [[x0, y0, x1, y1, ...], ...]}],
//         "background": [x0, y0, ...], "labels": ["t = 1000", ...], "extent": [x0, x1, y0, y1],
//         "play": "Play", "pause": "Pause", "fps": 12}
// Runs as gr.HTML's js_on_load, with `element`, `props` and `watch` in scope.
(() => {
  let data = null, frame = 0, timer = null;

  function parse() {
    try { data = JSON.parse(props.value || "null"); } catch (e) { data = null; }
    if (data && !(data.panels && data.panels.length && data.labels && data.labels.length)) data = null;
  }

  function draw() {
    const row = element.querySelector(".dl-player-panels");
    const slider = element.querySelector("input[type=range]");
    const label = element.querySelector(".dl-player-label");
    const button = element.querySelector("button");
    if (!row || !slider) return;
    if (!data) {
      row.innerHTML = ""; slider.disabled = true; if (button) button.disabled = true;
      if (label) label.textContent = "";
      return;
    }
    const steps = data.labels.length;
    frame = Math.max(0, Math.min(frame, steps - 1));
    slider.disabled = false; slider.max = String(steps - 1); slider.value = String(frame);
    if (button) { button.disabled = false; button.textContent = timer ? data.pause : data.play; }
    if (label) label.textContent = data.labels[frame];
    while (row.children.length < data.panels.length) {
      const figure = document.createElement("figure");
      figure.innerHTML = '<figcaption></figcaption><canvas width="320" height="320"></canvas>';
      row.appendChild(figure);
    }
    while (row.children.length > data.panels.length) row.removeChild(row.lastChild);
    const [x0, x1, y0, y1] = data.extent;
    data.panels.forEach((panel, k) => {
      const figure = row.children[k];
      figure.querySelector("figcaption").textContent = panel.title;
      const c = figure.querySelector("canvas"), ctx = c.getContext("2d");
      const sx = (x) => (x - x0) / (x1 - x0) * c.width, sy = (y) => (y1 - y) / (y1 - y0) * c.height;
      ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, c.width, c.height);
      ctx.strokeStyle = "#d4d4d8"; ctx.strokeRect(0.5, 0.5, c.width - 1, c.height - 1);
      ctx.fillStyle = "rgba(120, 120, 120, 0.35)";
      const bg = data.background || [];
      for (let i = 0; i + 1 < bg.length; i += 2) ctx.fillRect(sx(bg[i]) - 1, sy(bg[i + 1]) - 1, 2, 2);
      const points = panel.frames[Math.min(frame, panel.frames.length - 1)] || [];
      ctx.fillStyle = panel.color || "#1d4ed8";
      for (let i = 0; i + 1 < points.length; i += 2) ctx.fillRect(sx(points[i]) - 1.5, sy(points[i + 1]) - 1.5, 3, 3);
    });
  }

  function stop() { if (timer) { clearInterval(timer); timer = null; } }
  function play() {
    if (!data) return;
    if (frame >= data.labels.length - 1) frame = 0;
    timer = setInterval(() => {
      if (!data || frame >= data.labels.length - 1) { stop(); draw(); return; }
      frame += 1; draw();
    }, 1000 / (data.fps || 12));
  }

  element.addEventListener("click", (event) => {
    if (event.target.tagName !== "BUTTON") return;
    if (timer) stop(); else play();
    draw();
  });
  element.addEventListener("input", (event) => {
    if (event.target.type !== "range") return;
    stop(); frame = Number(event.target.value); draw();
  });
  watch("value", () => { stop(); parse(); frame = data ? data.labels.length - 1 : 0; draw(); dlRelocalize(); });
  parse();
  frame = data ? data.labels.length - 1 : 0;
  draw();
})();
