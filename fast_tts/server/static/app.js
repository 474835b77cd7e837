// fast-tts web page: streams speech into the <audio> element while it is generated.
// mp3 goes through MediaSource (Chromium plays audio/mpeg from MSE), pcm through Web Audio (raw s16le scheduled
// back to back); other formats are fetched whole and then played. fetch() is used everywhere, not <audio src=URL>,
// so that the Authorization header can be sent when the server has an API key.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, controller: null, recorded: null, recorder: null, objectUrl: null };
// Exposed for automated checks (the browser test reads how many audio bytes arrived).
window.fastTTS = { bytes: 0, done: false, error: null, mode: null };

$("api-key").value = localStorage.getItem("fast-tts-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("fast-tts-key", $("api-key").value); init(); });

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    const e = body.error || {};
    return `${resp.status}: ${e.message || JSON.stringify(body)}`;
  } catch (_) {
    return `${resp.status} ${resp.statusText}`;
  }
}

async function init() {
  try {
    const resp = await fetch("/health", { headers: headers() });
    if (!resp.ok) { $("server-info").textContent = await errorText(resp); return; }
    state.info = await resp.json();
    $("server-info").textContent =
      `${state.info.model} · ${state.info.sample_rate} Hz · default voice ${state.info.default_voice}`;
    $("clone-section").classList.toggle("hidden", !state.info.can_clone);
    await loadVoices();
  } catch (err) {
    $("server-info").textContent = "server unreachable: " + err;
  }
}

async function loadVoices() {
  const resp = await fetch("/v1/audio/voices", { headers: headers() });
  if (!resp.ok) return;
  const body = await resp.json();
  const select = $("voice");
  const previous = select.value;
  select.innerHTML = "";
  for (const v of body.data) {
    const opt = document.createElement("option");
    opt.value = v.id;
    opt.textContent = v.alias ? `${v.id} → ${v.voice}` : v.id;
    select.appendChild(opt);
  }
  select.value = previous || state.info.default_voice;
}

function resetOutput(format) {
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = null;
  $("download").classList.add("hidden");
  $("download").download = "speech." + format;
  window.fastTTS = { bytes: 0, done: false, error: null, mode: null };
}

function offerDownload(parts, format) {
  const type = { mp3: "audio/mpeg", wav: "audio/wav", pcm: "audio/pcm", opus: "audio/ogg", flac: "audio/flac",
                 aac: "audio/aac" }[format];
  const url = URL.createObjectURL(new Blob(parts, { type }));
  $("download").href = url;
  $("download").classList.remove("hidden");
  return url;
}

function appendBuffer(sourceBuffer, chunk) {
  return new Promise((resolve, reject) => {
    sourceBuffer.addEventListener("updateend", resolve, { once: true });
    sourceBuffer.addEventListener("error", reject, { once: true });
    sourceBuffer.appendBuffer(chunk);
  });
}

// mp3: play through MediaSource as the bytes arrive.
async function playMediaSource(resp, format) {
  const audio = $("player");
  const media = new MediaSource();
  audio.src = URL.createObjectURL(media);
  await new Promise((resolve) => media.addEventListener("sourceopen", resolve, { once: true }));
  const sourceBuffer = media.addSourceBuffer("audio/mpeg");
  const reader = resp.body.getReader();
  const parts = [];
  let started = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    window.fastTTS.bytes += value.length;
    await appendBuffer(sourceBuffer, value);
    if (!started) {
      started = true;
      audio.play().catch((err) => setStatus("press play: " + err.message, true));
    }
  }
  if (media.readyState === "open") media.endOfStream();
  offerDownload(parts, format);
}

// pcm: schedule s16le blocks on a Web Audio clock; the <audio> element then gets the finished file for replay.
async function playWebAudio(resp, format) {
  const rate = Number(resp.headers.get("X-Sample-Rate")) || state.info.sample_rate;
  const ctx = new AudioContext();
  const reader = resp.body.getReader();
  const parts = [];
  let carry = new Uint8Array(0);
  let when = ctx.currentTime + 0.05;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    window.fastTTS.bytes += value.length;
    const joined = new Uint8Array(carry.length + value.length);
    joined.set(carry); joined.set(value, carry.length);
    const usable = joined.length - (joined.length % 2);
    carry = joined.slice(usable);
    if (!usable) continue;
    const samples = new Int16Array(joined.buffer.slice(0, usable));
    const buffer = ctx.createBuffer(1, samples.length, rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    when = Math.max(when, ctx.currentTime);
    source.start(when);
    when += buffer.duration;
  }
  offerDownload(parts, format);
}

// Other formats: fetch the whole file, then play it.
async function playWhole(resp, format) {
  const reader = resp.body.getReader();
  const parts = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    window.fastTTS.bytes += value.length;
  }
  const audio = $("player");
  audio.src = offerDownload(parts, format);
  await audio.play().catch((err) => setStatus("press play: " + err.message, true));
}

async function playResponse(resp, format) {
  const canStreamMp3 = window.MediaSource && MediaSource.isTypeSupported("audio/mpeg");
  if (format === "mp3" && canStreamMp3) { window.fastTTS.mode = "mediasource"; await playMediaSource(resp, format); }
  else if (format === "pcm" && window.AudioContext) { window.fastTTS.mode = "webaudio"; await playWebAudio(resp, format); }
  else { window.fastTTS.mode = "whole"; await playWhole(resp, format); }
}

async function run(request, format) {
  if (state.controller) state.controller.abort();
  resetOutput(format);
  const controller = new AbortController();
  state.controller = controller;
  $("stop").disabled = false;
  const started = performance.now();
  setStatus("synthesizing…");
  try {
    const resp = await request(controller.signal);
    if (!resp.ok) throw new Error(await errorText(resp));
    setStatus(`first bytes after ${Math.round(performance.now() - started)} ms, streaming…`);
    await playResponse(resp, format);
    window.fastTTS.done = true;
    setStatus(`done in ${Math.round(performance.now() - started)} ms, ${window.fastTTS.bytes} bytes`);
  } catch (err) {
    window.fastTTS.error = String(err.message || err);
    setStatus(err.name === "AbortError" ? "stopped" : String(err.message || err), err.name !== "AbortError");
  } finally {
    if (state.controller === controller) { state.controller = null; $("stop").disabled = true; }
  }
}

// The advanced parameters box: {} when empty; a parse error is shown and stops the request.
function engineParams() {
  const raw = $("params").value.trim();
  if (!raw) return {};
  const parsed = JSON.parse(raw);
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("parameters must be a JSON object");
  return parsed;
}

$("speak").addEventListener("click", () => {
  const format = $("format").value;
  let params;
  try { params = engineParams(); } catch (err) { setStatus("engine parameters: " + err.message, true); return; }
  const voice = $("voice").value || (state.info && state.info.default_voice) || "alloy";
  const speed = Number($("speed").value) || 1;
  // Plain requests use the OpenAI route; with engine parameters, the native route that takes them all.
  const [url, body] = Object.keys(params).length
    ? ["/api/speak", { text: $("text").value, voice, response_format: format, speed, params }]
    : ["/v1/audio/speech", { model: state.info ? state.info.model : "tts-1", input: $("text").value, voice,
                             response_format: format, speed }];
  run((signal) => fetch(url, {
    method: "POST", signal, headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
  }), format);
});

$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); $("player").pause(); });

function referenceBlob() {
  const file = $("ref-file").files[0];
  if (file) return { blob: file, name: file.name };
  if (state.recorded) return { blob: state.recorded, name: "recording.webm" };
  return null;
}

$("ref-file").addEventListener("change", () => {
  state.recorded = null;
  const file = $("ref-file").files[0];
  if (file) { $("ref-preview").src = URL.createObjectURL(file); $("ref-preview").classList.remove("hidden"); }
});

$("record").addEventListener("click", async () => {
  if (state.recorder) { state.recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      state.recorded = new Blob(chunks, { type: recorder.mimeType });
      state.recorder = null;
      $("ref-file").value = "";
      $("record").textContent = "Record";
      $("ref-preview").src = URL.createObjectURL(state.recorded);
      $("ref-preview").classList.remove("hidden");
    };
    state.recorder = recorder;
    recorder.start();
    $("record").textContent = "Stop recording";
  } catch (err) {
    setStatus("microphone: " + err.message, true);
  }
});

$("clone").addEventListener("click", () => {
  const ref = referenceBlob();
  if (!ref) { setStatus("choose or record a reference clip first", true); return; }
  const format = $("format").value;
  let params;
  try { params = engineParams(); } catch (err) { setStatus("engine parameters: " + err.message, true); return; }
  const form = new FormData();
  form.append("text", $("text").value);
  if (Object.keys(params).length) form.append("params", JSON.stringify(params));
  form.append("reference_audio", ref.blob, ref.name);
  if ($("ref-text").value) form.append("reference_text", $("ref-text").value);
  form.append("response_format", format);
  form.append("speed", String(Number($("speed").value) || 1));
  run((signal) => fetch("/api/clone", { method: "POST", signal, headers: headers(), body: form }), format);
});

$("save-speaker").addEventListener("click", async () => {
  const ref = referenceBlob();
  const name = $("speaker-name").value.trim();
  if (!ref || !name) { setStatus("give a speaker name and a reference clip", true); return; }
  const form = new FormData();
  form.append("name", name);
  form.append("audio", ref.blob, ref.name);
  if ($("ref-text").value) form.append("reference_text", $("ref-text").value);
  const resp = await fetch("/api/speakers", { method: "POST", headers: headers(), body: form });
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  setStatus(`saved speaker ${name}`);
  await loadVoices();
  $("voice").value = name;
});

init();
