"""The review page: one self-contained HTML document (inline CSS and JS, no CDN assets), kept as a
Python string so that it ships inside the package without package-data configuration."""

HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ipa review</title>
<style>
  :root { --good: #1f9d55; --bad: #d64545; --auto: #c99a2e; --bg: #16181d; --card: #22252c; --fg: #e8e8e8; }
  body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
  header { position: sticky; top: 0; z-index: 2; background: #0f1114; padding: 8px 16px;
           display: flex; gap: 24px; align-items: baseline; border-bottom: 1px solid #333; }
  header h1 { font-size: 16px; margin: 0; }
  header .keys { color: #aaa; font-size: 12px; }
  #status { margin-left: auto; font-size: 12px; }
  .row { display: flex; gap: 12px; padding: 12px 16px; border-bottom: 1px solid #2c2f36; overflow-x: auto; }
  .cond { flex: 0 0 auto; width: 200px; }
  .cond h2 { font-size: 13px; margin: 0 0 6px; word-break: break-all; }
  .cond video, .cond img { width: 96px; image-rendering: pixelated; background: #000; vertical-align: top; }
  .cand { flex: 0 0 auto; background: var(--card); border: 3px solid transparent; border-radius: 8px;
          padding: 8px; width: 420px; }
  .cand.focus { outline: 2px solid #5b9cff; outline-offset: 2px; }
  .cand.good { border-color: var(--good); }
  .cand.bad { border-color: var(--bad); opacity: .75; }
  .media { display: flex; gap: 6px; }
  .media video { width: 200px; height: 200px; object-fit: contain; background: #000; image-rendering: pixelated; }
  .nocrop { width: 200px; height: 200px; display: flex; align-items: center; justify-content: center;
            background: #000; color: #777; font-size: 12px; }
  .meta { display: flex; justify-content: space-between; align-items: center; margin-top: 6px; }
  .scores { font-size: 12px; color: #bbb; }
  .scores b { color: var(--fg); }
  .tag { font-size: 11px; padding: 1px 6px; border-radius: 8px; background: var(--auto); color: #111; }
  button { font: inherit; padding: 4px 14px; border-radius: 6px; border: 1px solid #555; background: #2e323a;
           color: var(--fg); cursor: pointer; }
  button.good.on { background: var(--good); border-color: var(--good); }
  button.bad.on { background: var(--bad); border-color: var(--bad); }
</style>
</head>
<body>
<header>
  <h1>ipa review</h1>
  <span class="keys">click good / bad (again to clear) &middot; &larr;&rarr;&uarr;&darr; move &middot; g good &middot; b bad &middot; x clear</span>
  <span id="status">loading&hellip;</span>
</header>
<main id="rows"></main>
<script>
"use strict";
let cards = [], focus = 0;
const status = document.getElementById("status");

function fmt(x) { return x === undefined || x === null ? "–" : Number(x).toFixed(2); }

function render(state) {
  const rows = document.getElementById("rows");
  rows.textContent = "";
  cards = [];
  for (const cond of state.conditions) {
    const row = document.createElement("section");
    row.className = "row";
    row.innerHTML = `<div class="cond"><h2></h2><video muted loop autoplay playsinline></video>
      <img alt="reference"><div class="scores">pose &middot; reference</div></div>`;
    row.querySelector("h2").textContent = cond.id;
    row.querySelector("video").src = cond.pose;
    row.querySelector("img").src = cond.reference;
    for (const c of cond.candidates) {
      const card = document.createElement("div");
      card.className = "cand";
      card.dataset.key = c.key;
      card.innerHTML = `<div class="media"><video class="full" muted loop autoplay playsinline></video>
        ${c.crop ? '<video class="crop" muted loop autoplay playsinline></video>' : '<div class="nocrop">no hands in the pose</div>'}</div>
        <div class="meta"><span class="scores"></span><span>
        <button class="good" data-label="good">good</button> <button class="bad" data-label="bad">bad</button></span></div>`;
      card.querySelector("video.full").src = c.video;
      if (c.crop) card.querySelector("video.crop").src = c.crop;
      const s = c.scores || {};
      card.querySelector(".scores").innerHTML =
        `cand ${c.index} &middot; <b>score ${fmt(c.score)}</b> (#${c.rank ?? "–"})` +
        (c.auto ? ' <span class="tag">auto pick</span>' : "") +
        `<br>det ${fmt(s.detection)} conf ${fmt(s.confidence)} agree ${fmt(s.agreement)} jitter ${fmt(s.jitter)}`;
      for (const b of card.querySelectorAll("button")) {
        b.addEventListener("click", (e) => {
          e.stopPropagation(); focus = cards.indexOf(card); paintFocus(); mark(card, b.dataset.label);
        });
      }
      card.addEventListener("click", () => { focus = cards.indexOf(card); paintFocus(); });
      paint(card, c.human);
      cards.push(card);
      row.appendChild(card);
    }
    rows.appendChild(row);
  }
  paintFocus();
}

function paint(card, human) {
  card.dataset.human = human || "";
  card.classList.toggle("good", human === "good");
  card.classList.toggle("bad", human === "bad");
  card.querySelector("button.good").classList.toggle("on", human === "good");
  card.querySelector("button.bad").classList.toggle("on", human === "bad");
}

function paintFocus() {
  cards.forEach((c, i) => c.classList.toggle("focus", i === focus));
  if (cards[focus]) cards[focus].scrollIntoView({block: "nearest", inline: "nearest"});
}

async function mark(card, label) {
  if (label && card.dataset.human === label) label = null;  // a second click clears
  status.textContent = "saving…";
  try {
    const r = await fetch("/api/label", {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify({key: card.dataset.key, label})});
    const saved = await r.json();
    if (!r.ok) throw new Error(saved.error || r.statusText);
    paint(card, saved.human);  // paint what the server wrote, not what was asked
    status.textContent = `saved ${saved.key}: ${saved.human ?? "unmarked"}`;
  } catch (e) {
    status.textContent = "NOT saved: " + e.message;
  }
}

function rowOf(card) { return card.parentElement; }

document.addEventListener("keydown", (e) => {
  if (!cards.length || e.ctrlKey || e.metaKey || e.altKey) return;
  const card = cards[focus];
  if (e.key === "ArrowRight") focus = Math.min(cards.length - 1, focus + 1);
  else if (e.key === "ArrowLeft") focus = Math.max(0, focus - 1);
  else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    const rows = [...document.querySelectorAll(".row")];
    const r = rows.indexOf(rowOf(card)) + (e.key === "ArrowDown" ? 1 : -1);
    if (r >= 0 && r < rows.length) focus = cards.indexOf(rows[r].querySelector(".cand"));
  }
  else if (e.key === "g") return mark(card, "good");
  else if (e.key === "b") return mark(card, "bad");
  else if (e.key === "x") return mark(card, null);
  else return;
  e.preventDefault();
  paintFocus();
});

fetch("/api/state").then((r) => r.json()).then((state) => {
  render(state);
  status.textContent = `${cards.length} candidates · saving to ${state.selection}`;
}).catch((e) => { status.textContent = "could not load: " + e.message; });
</script>
</body>
</html>
"""
