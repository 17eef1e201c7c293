// A drawing canvas whose strokes become the component's value: JSON
// {"strokes": [[[x, y], ...], ...], "width": W, "height": H} in canvas pixels (y down).
// Runs as gr.HTML's js_on_load, with `element`, `props` and `trigger` in scope.
(() => {
  const MAX_POINTS = 20000;  // the server refuses more (diffusion.lessons.lab2d.drawn)
  let strokes = [];
  try { strokes = JSON.parse(props.value || "{}").strokes || []; } catch (e) { strokes = []; }
  let drawing = null;

  const canvas = () => element.querySelector("canvas");
  const count = () => strokes.reduce((n, s) => n + s.length, 0);

  function paint() {
    const c = canvas();
    if (!c) return;
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, c.width, c.height);
    ctx.strokeStyle = "#1d4ed8";
    ctx.fillStyle = "#1d4ed8";
    ctx.lineWidth = 3;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const s of strokes) {
      if (s.length === 1) {
        ctx.beginPath(); ctx.arc(s[0][0], s[0][1], 2, 0, 2 * Math.PI); ctx.fill();
        continue;
      }
      ctx.beginPath();
      s.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.stroke();
    }
  }

  function publish() {
    const c = canvas();
    props.value = JSON.stringify({ strokes, width: c.width, height: c.height });
    trigger("change");
  }

  function position(event) {
    const c = canvas();
    const box = c.getBoundingClientRect();
    return [Math.round((event.clientX - box.left) * c.width / box.width),
            Math.round((event.clientY - box.top) * c.height / box.height)];
  }

  element.addEventListener("pointerdown", (event) => {
    if (event.target.tagName !== "CANVAS" || count() >= MAX_POINTS) return;
    event.preventDefault();
    event.target.setPointerCapture(event.pointerId);
    drawing = [position(event)];
    strokes.push(drawing);
    paint();
  });
  element.addEventListener("pointermove", (event) => {
    if (!drawing || count() >= MAX_POINTS) return;
    const p = position(event);
    const last = drawing[drawing.length - 1];
    if (Math.abs(p[0] - last[0]) + Math.abs(p[1] - last[1]) >= 2) { drawing.push(p); paint(); }
  });
  const finish = () => { if (drawing) { drawing = null; publish(); } };
  element.addEventListener("pointerup", finish);
  element.addEventListener("pointercancel", finish);
  element.addEventListener("click", (event) => {
    if (event.target.dataset && event.target.dataset.action === "clear") {
      strokes = []; paint(); publish();
    }
  });
  watch("value", () => {
    try { strokes = JSON.parse(props.value || "{}").strokes || []; } catch (e) { strokes = []; }
    paint();
    dlRelocalize();
  });
  paint();
})();
