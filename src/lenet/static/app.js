// The drawing page: pointer events (mouse, pen, touch) on a canvas; the canvas is sent as PNG
// to /api/predict while drawing (at most one request in flight, the latest drawing always wins)
// and the answer is shown as a big digit, one bar per class and the 28x28 the network saw.
// "A number" mode: a wide canvas sent to /api/read; the string is shown, one chip per
// character, and each character's box is drawn over the strokes (an overlay canvas).
"use strict";

(function () {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const result = document.getElementById("result");
  const digitEl = document.getElementById("digit");
  const confEl = document.getElementById("confidence");
  const statusEl = document.getElementById("status");
  const barsEl = document.getElementById("bars");
  const seenEl = document.getElementById("preprocessed");
  const modelEl = document.getElementById("model");
  const upload = document.getElementById("upload");
  const overlay = document.getElementById("overlay");
  const octx = overlay.getContext("2d");
  const charsEl = document.getElementById("chars");
  const hintEl = document.getElementById("hint");
  const modeButtons = { digit: document.getElementById("mode-digit"), number: document.getElementById("mode-number") };
  const MODES = {
    digit: { width: 280, height: 280, api: "/api/predict", hint: "Draw a digit (0–9) in the box. The network answers as you draw.", start: "Draw a digit to start." },
    number: { width: 840, height: 280, api: "/api/read", hint: "Write a number (several digits, left to right). The network reads it as you write.", start: "Write a number to start." },
  };
  let mode = "digit";
  let placed = null; // where an uploaded photo lies on the pad: {s, x, y} (for its boxes)

  // A stroke about as wide, relative to the box's height, as an MNIST pen stroke in its 28x28.
  let LINE_WIDTH = Math.round(pad.height / 14);
  const MIN_INTERVAL_MS = 80; // between two requests while the pen keeps moving

  // One bar per class, built once.
  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.dataset.digit = String(d);
    li.innerHTML = '<span class="lab"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
    li.querySelector(".lab").textContent = String(d);
    barsEl.appendChild(li);
    bars.push({ li: li, fill: li.querySelector(".fill"), pct: li.querySelector(".pct") });
  }

  function setState(state) { result.dataset.state = state; }

  function clearCanvas() {
    ctx.fillStyle = "#fff"; // paper: dark ink on white, as a photo of a digit would be
    ctx.fillRect(0, 0, pad.width, pad.height);
    octx.clearRect(0, 0, overlay.width, overlay.height);
    placed = null;
  }

  function setMode(m) {
    mode = m;
    document.body.dataset.mode = m;
    for (const k in modeButtons) modeButtons[k].setAttribute("aria-pressed", String(k === m));
    pad.width = overlay.width = MODES[m].width;
    pad.height = overlay.height = MODES[m].height;
    LINE_WIDTH = Math.round(pad.height / 14);
    pad.setAttribute("aria-label", m === "number" ? "drawing area: write several digits here" : "drawing area: draw one digit here");
    hintEl.textContent = MODES[m].hint;
    dirty = false;
    pendingFile = null;
    clearCanvas();
    resetResult(MODES[m].start);
    setState("idle");
  }

  function resetResult(message) {
    digitEl.textContent = "–";
    confEl.innerHTML = "&nbsp;";
    statusEl.textContent = message;
    seenEl.removeAttribute("src");
    for (const b of bars) { b.fill.style.width = "0"; b.pct.textContent = ""; b.li.classList.remove("top"); }
    charsEl.textContent = "";
    octx.clearRect(0, 0, overlay.width, overlay.height);
  }

  // Number mode: the string, a chip per character, and the boxes over the strokes.
  function showReading(answer) {
    charsEl.textContent = "";
    octx.clearRect(0, 0, overlay.width, overlay.height);
    if (answer.text === null || answer.text === undefined) {
      digitEl.textContent = "?";
      confEl.textContent = answer.reason || "no answer";
    } else {
      digitEl.textContent = answer.text;
      confEl.textContent = (100 * answer.confidence).toFixed(1) + "% sure" + (answer.unsure ? " (unsure)" : "");
    }
    octx.lineWidth = 3;
    octx.strokeStyle = "#2563eb";
    octx.fillStyle = "#2563eb";
    octx.font = "bold 20px system-ui, sans-serif";
    for (const c of answer.characters || []) {
      const li = document.createElement("li");
      const b = document.createElement("b");
      b.textContent = c.char;
      const span = document.createElement("span");
      span.textContent = c.confidence === null ? "" : (100 * c.confidence).toFixed(0) + "%";
      li.appendChild(b);
      li.appendChild(span);
      charsEl.appendChild(li);
      let [x0, y0, x1, y1] = c.box;
      if (placed) { // boxes of an uploaded photo: onto where it is drawn on the pad
        x0 = placed.x + x0 * placed.s; x1 = placed.x + x1 * placed.s;
        y0 = placed.y + y0 * placed.s; y1 = placed.y + y1 * placed.s;
      }
      octx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      octx.fillText(c.char, x0 + 4, Math.max(18, y0 - 4));
    }
    statusEl.textContent = answer.model + " · " + answer.elapsed_ms.toFixed(1) + " ms on the server";
  }

  function show(answer) {
    if (mode === "number") { showReading(answer); return; }
    const probs = answer.probabilities || [];
    const best = probs.length ? probs.indexOf(Math.max.apply(null, probs)) : -1;
    bars.forEach(function (b, d) {
      const p = probs[d] || 0;
      b.fill.style.width = (100 * p).toFixed(1) + "%";
      b.pct.textContent = probs.length ? (100 * p).toFixed(1) + "%" : "";
      b.li.classList.toggle("top", d === best);
    });
    if (answer.digit === null || answer.digit === undefined) {
      digitEl.textContent = "?";
      confEl.textContent = answer.reason || "no answer";
    } else {
      digitEl.textContent = String(answer.digit);
      confEl.textContent = (100 * answer.confidence).toFixed(1) + "% sure";
    }
    statusEl.textContent = answer.model + " · " + answer.elapsed_ms.toFixed(1) + " ms on the server";
    if (answer.preprocessed_png_base64) {
      seenEl.src = "data:image/png;base64," + answer.preprocessed_png_base64;
    } else {
      seenEl.removeAttribute("src");
    }
  }

  function showError(message) {
    digitEl.textContent = "–";
    confEl.innerHTML = "&nbsp;";
    statusEl.textContent = message;
  }

  // --- requests: one in flight, re-sent when the drawing changed meanwhile -----------------
  let inFlight = false;
  let dirty = false;       // the canvas changed since the last request started
  let pendingFile = null;  // an uploaded file waiting to be sent
  let lastSent = 0;

  function canvasBlob() {
    return new Promise(function (resolve) { pad.toBlob(resolve, "image/png"); });
  }

  async function send(body, contentType) {
    const opts = { method: "POST", body: body };
    if (contentType) opts.headers = { "Content-Type": contentType };
    const r = await fetch(MODES[mode].api, opts);
    let answer = null;
    try { answer = await r.json(); } catch (e) { answer = null; }
    if (!r.ok) throw new Error((answer && answer.error) || ("HTTP " + r.status));
    return answer;
  }

  async function pump() {
    if (inFlight || (!dirty && !pendingFile)) return;
    const wait = lastSent + MIN_INTERVAL_MS - performance.now();
    if (wait > 0 && !pendingFile) { setTimeout(pump, wait); return; }
    inFlight = true;
    setState("pending");
    lastSent = performance.now();
    let state = "done";
    try {
      let answer;
      if (pendingFile) {
        const form = new FormData();
        form.append("file", pendingFile, pendingFile.name || "upload");
        pendingFile = null;
        answer = await send(form, null);
      } else {
        dirty = false;
        answer = await send(await canvasBlob(), "image/png");
      }
      show(answer);
      const value = mode === "number" ? answer.text : answer.digit;
      if (value === null || value === undefined) state = "blank";
    } catch (e) {
      showError("Error: " + e.message);
      state = "error";
    }
    inFlight = false;
    if (dirty || pendingFile) pump(); else setState(state);
  }

  // "pending" at once, so that "done" always means: the answer to the latest drawing is shown.
  function requestPrediction() { dirty = true; placed = null; setState("pending"); pump(); }

  // --- drawing -----------------------------------------------------------------------------
  let drawing = false;
  let last = null;

  function point(ev) {
    const r = pad.getBoundingClientRect();
    return { x: (ev.clientX - r.left) * (pad.width / r.width), y: (ev.clientY - r.top) * (pad.height / r.height) };
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, LINE_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fillStyle = "#000";
    ctx.fill();
  }

  function line(a, b) {
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = LINE_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.stroke();
  }

  pad.addEventListener("pointerdown", function (ev) {
    if (ev.button !== undefined && ev.button > 0) return;
    ev.preventDefault();
    try { pad.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic or finished pointer */ }
    drawing = true;
    last = point(ev);
    dot(last);
    requestPrediction();
  });

  pad.addEventListener("pointermove", function (ev) {
    if (!drawing) return;
    ev.preventDefault();
    // Coalesced events give the full path of a fast stroke (pen and touch especially).
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of (events.length ? events : [ev])) {
      const p = point(e);
      line(last, p);
      last = p;
    }
    requestPrediction();
  });

  function endStroke(ev) {
    if (!drawing) return;
    drawing = false;
    last = null;
    if (ev && pad.hasPointerCapture && pad.hasPointerCapture(ev.pointerId)) pad.releasePointerCapture(ev.pointerId);
    requestPrediction();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  document.getElementById("clear").addEventListener("click", function () {
    clearCanvas();
    dirty = false;
    resetResult(MODES[mode].start);
    setState("idle");
  });

  modeButtons.digit.addEventListener("click", function () { if (mode !== "digit") setMode("digit"); });
  modeButtons.number.addEventListener("click", function () { if (mode !== "number") setMode("number"); });

  upload.addEventListener("change", function () {
    const file = upload.files && upload.files[0];
    if (!file) return;
    // Show the photo on the pad (scaled to fit) and send the original file itself.
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = function () {
      clearCanvas();
      const s = Math.min(pad.width / img.naturalWidth, pad.height / img.naturalHeight);
      const w = img.naturalWidth * s, h = img.naturalHeight * s;
      ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
      placed = { s: s, x: (pad.width - w) / 2, y: (pad.height - h) / 2 };
      URL.revokeObjectURL(url);
    };
    img.onerror = function () { URL.revokeObjectURL(url); };
    img.src = url;
    dirty = false;
    pendingFile = file;
    setState("pending");
    upload.value = "";
    pump();
  });

  fetch("/api/model").then(function (r) { return r.json(); }).then(function (m) {
    const acc = typeof m.test_accuracy === "number" ? " · " + (100 * m.test_accuracy).toFixed(2) + "% on MNIST test" : "";
    modelEl.textContent = "model: " + (m.name || m.model || "?") + acc;
  }).catch(function () { modelEl.textContent = "model: unavailable"; });

  clearCanvas();
  resetResult(MODES[mode].start);
})();
