// Plays pictures of a process in the browser: they come once, as the component's value
// (JSON), and Play / the slider move through them without asking the server.
// value: {"panels": [{"title", "frames": ["data:image/png;base64,...", ...]}],
//         "captions": ["t = 0 ...", ...], "start": 0, "fps": 8, "note": "", "pixelated": false,
//         "width": 640}
// Runs as gr.HTML's js_on_load, with `element`, `props` and `watch` in scope, after
// localize.js (which defines dlLocalize and dlRelocalize).
(() => {
  let data = null, frame = 0, timer = null;

  const zh = () => {
    const marker = document.querySelector("#dl-locale");
    const code = document.body.dataset.dlLang || (marker ? marker.innerText.trim() : "en");
    return code.startsWith("zh");
  };

  function parse() {
    try { data = JSON.parse(props.value || "null"); } catch (e) { data = null; }
    const ok = data && Array.isArray(data.panels) && data.panels.length && Array.isArray(data.captions) &&
      data.captions.length && data.panels.every((p) => Array.isArray(p.frames) && p.frames.length === data.captions.length);
    if (!ok) data = null;
    // Decode every picture once, so playing never waits for one.
    if (data) data.panels.forEach((p) => p.frames.forEach((src) => { const im = new Image(); im.src = src; }));
    frame = data ? Math.max(0, Math.min(data.start || 0, data.captions.length - 1)) : 0;
  }

  // data-play-en, data-pause-zh, ...: the button's words in both languages.
  const label = (button) => button.dataset[(timer ? "pause" : "play") + (zh() ? "Zh" : "En")];

  function draw() {
    const row = element.querySelector(".dl-frames-panels");
    const slider = element.querySelector("input[type=range]");
    const button = element.querySelector("button.dl-frames-play");
    const caption = element.querySelector(".dl-frames-caption");
    const note = element.querySelector(".dl-frames-note");
    if (!row || !slider || !button) return;
    if (!data) {
      row.innerHTML = ""; slider.disabled = true; button.disabled = true;
      if (caption) caption.textContent = "";
      if (note) note.textContent = "";
      return;
    }
    const steps = data.captions.length;
    frame = Math.max(0, Math.min(frame, steps - 1));
    slider.disabled = steps < 2; slider.max = String(steps - 1); slider.value = String(frame);
    slider.setAttribute("aria-valuetext", data.captions[frame]);
    button.disabled = steps < 2;
    button.textContent = label(button);
    button.setAttribute("aria-pressed", timer ? "true" : "false");
    if (caption) caption.textContent = data.captions[frame];
    if (note) note.textContent = data.note || "";
    // Small pixelated pictures are shown at twice their size; others at most at their own.
    row.style.setProperty("--dl-frame-width", (data.pixelated ? 2 : 1) * (data.width || 320) + "px");
    while (row.children.length < data.panels.length) {
      const figure = document.createElement("figure");
      figure.innerHTML = "<figcaption></figcaption><img>";
      row.appendChild(figure);
    }
    while (row.children.length > data.panels.length) row.removeChild(row.lastChild);
    data.panels.forEach((panel, k) => {
      const figure = row.children[k];
      figure.querySelector("figcaption").textContent = panel.title || "";
      const img = figure.querySelector("img");
      img.classList.toggle("dl-pixelated", !!data.pixelated);
      img.alt = (panel.title ? panel.title + ": " : "") + data.captions[frame];
      const src = panel.frames[frame];
      if (img.getAttribute("src") !== src) img.setAttribute("src", src);
    });
  }

  function stop() { if (timer) { clearInterval(timer); timer = null; } }
  function play() {
    if (!data || data.captions.length < 2) return;
    if (frame >= data.captions.length - 1) frame = 0;
    timer = setInterval(() => {
      if (!data || frame >= data.captions.length - 1) { stop(); draw(); return; }
      frame += 1; draw();
    }, 1000 / Math.max(1, Math.min(30, data.fps || 8)));
  }

  element.addEventListener("click", (event) => {
    if (!event.target.closest || !event.target.closest("button.dl-frames-play")) return;
    if (timer) stop(); else play();
    draw();
  });
  element.addEventListener("input", (event) => {
    if (event.target.type !== "range") return;
    stop(); frame = Number(event.target.value); draw();
  });
  watch("value", () => { stop(); parse(); draw(); dlRelocalize(); });
  // The button's words are chosen here, not by dlLocalize: follow a language switch too.
  const marker = document.querySelector("#dl-locale");
  if (marker) new MutationObserver(draw).observe(marker, { childList: true, subtree: true, characterData: true });
  parse();
  draw();
})();
