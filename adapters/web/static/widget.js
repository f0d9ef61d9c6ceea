/* Parley web chat widget.
 *
 * One tag adds it to a page:  <script src="https://parley.example/widget.js" async></script>
 * It draws a launcher button and a chat panel inside a shadow root (the page's styles and
 * the widget's stay apart), and talks to the Parley server it was loaded from over a
 * WebSocket (/ws). The visitor's signed token is kept in localStorage, so a reload (or a
 * later visit) continues the conversation and shows its history. Plain JavaScript, no build
 * step; the server puts the site's settings and every user-facing word in CONFIG below.
 *
 * Protocol: see adapters/web/normalize.py.
 */
(function (CONFIG) {
  "use strict";
  if (window.ParleyChat) return; // the tag pasted twice: one widget

  var T = CONFIG.text;
  var script = document.currentScript;
  var server = new URL(script && script.src ? script.src : window.location.href);
  var wsUrl = (server.protocol === "https:" ? "wss://" : "ws://") + server.host + "/ws";
  var KEY = "parley:" + server.host + ":" + CONFIG.site + ":";
  var MAX_KNOWN_ANSWERS = 50;
  var NARROW = window.matchMedia("(max-width: 480px)");

  // -- storage (may be unavailable: private modes, blocked cookies) ---------------------------

  function load(store, name, fallback) {
    try {
      var value = window[store].getItem(KEY + name);
      return value === null ? fallback : JSON.parse(value);
    } catch (e) {
      return fallback;
    }
  }
  function save(store, name, value) {
    try {
      if (value === null) window[store].removeItem(KEY + name);
      else window[store].setItem(KEY + name, JSON.stringify(value));
    } catch (e) { /* the chat still works; it just forgets on reload */ }
  }

  function randomId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
  }

  // -- colours: the site's accent, with the text on it in whichever of black or white reads better

  function luminance(hex) {
    var channels = [1, 3, 5].map(function (i) {
      var v = parseInt(hex.substr(i, 2), 16) / 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2];
  }
  var accentLum = luminance(CONFIG.colour);
  var onAccent = 1.05 / (accentLum + 0.05) >= (accentLum + 0.05) / 0.05 ? "#ffffff" : "#111111";

  // -- the DOM ------------------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else if (name === "className") node.className = attrs[name];
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }
  function icon(path) {
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var p = document.createElementNS("http://www.w3.org/2000/svg", "path");
    p.setAttribute("d", path);
    p.setAttribute("fill", "currentColor");
    svg.appendChild(p);
    return svg;
  }

  // Thumbs drawn, not emoji: emoji fonts are missing on many systems (Material icons, Apache-2.0).
  var THUMB_UP = "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z";
  var THUMB_DOWN = "M15 3H6c-.83 0-1.54.5-1.84 1.22l-3.02 7.05c-.09.23-.14.47-.14.73v2c0 1.1.9 2 2 2h6.31l-.95 4.57-.03.32c0 .41.17.79.44 1.06L9.83 23l6.59-6.59c.36-.36.58-.86.58-1.41V5c0-1.1-.9-2-2-2zm4 0v12h4V3h-4z";

  var host = el("div", { id: "parley-chat" });
  host.style.setProperty("--accent", CONFIG.colour);
  host.style.setProperty("--on-accent", onAccent);
  var root = host.attachShadow({ mode: "open" });
  root.appendChild(el("link", { rel: "stylesheet", href: server.origin + "/widget.css" }));

  var launcher = el("button", {
    type: "button", className: "launcher", "aria-label": T.open + ": " + CONFIG.title,
    "aria-expanded": "false", "aria-controls": "parley-panel"
  }, [icon("M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2zm3 6v2h2v-2H7zm4 0v2h2v-2h-2zm4 0v2h2v-2h-2z")]);

  var closeButton = el("button", { type: "button", className: "close", "aria-label": T.close, text: "\u00d7" });
  var log = el("div", {
    className: "log", role: "log", "aria-live": "polite", "aria-label": T.conversation, tabindex: "0"
  });
  var status = el("p", { className: "status", role: "status" });
  var input = el("textarea", {
    id: "parley-input", rows: "1", maxlength: String(CONFIG.maxChars), placeholder: T.placeholder,
    "aria-describedby": "parley-hint", autocomplete: "off"
  });
  var sendButton = el("button", { type: "submit", className: "send", "aria-label": T.send },
    [icon("M3 20.5 21 12 3 3.5 3 10l12 2-12 2z")]);
  var form = el("form", { className: "composer" }, [
    el("label", { className: "visually-hidden", for: "parley-input", text: T.input_label }),
    input,
    sendButton,
    el("span", { id: "parley-hint", className: "visually-hidden", text: T.hint })
  ]);
  var panel = el("section", {
    id: "parley-panel", className: "panel", role: "dialog", "aria-labelledby": "parley-title", hidden: ""
  }, [
    el("div", { className: "header" }, [el("h2", { id: "parley-title", text: CONFIG.title }), closeButton]),
    log, status, form
  ]);
  root.appendChild(launcher);
  root.appendChild(panel);

  // -- messages on screen -------------------------------------------------------------------

  var answers = {}; // answer id -> {node, textNode, text, gap, done}
  var userBubbles = {}; // client message id -> bubble
  var pending = {}; // client message id -> text: not yet acknowledged by the server
  var inflight = {}; // answer id -> the user's text: acknowledged, answer not complete
  var historyAnswer = null; // the last answer shown from history: {node, text}

  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  }
  function scrollDown(force) {
    if (force || nearBottom()) log.scrollTop = log.scrollHeight;
  }

  // `agent`: a person of the support team wrote it; their name is shown above, for everyone.
  function bubble(kind, text, agent) {
    var who = agent
      ? el("span", { className: "agent-name", text: agent })
      : el("span", { className: "visually-hidden", text: (kind === "user" ? T.you : CONFIG.title) + ": " });
    var textNode = el("p", { className: "text" });
    textNode.textContent = text;
    var node = el("div", { className: "msg " + kind }, [who, textNode]);
    var stick = nearBottom();
    log.appendChild(node);
    scrollDown(stick || kind === "user");
    return { node: node, textNode: textNode };
  }

  function knownAnswers() { return load("localStorage", "answers", []); }
  function remember(id, text) {
    var list = knownAnswers().filter(function (item) { return item[0] !== id; });
    list.push([id, text]);
    save("localStorage", "answers", list.slice(-MAX_KNOWN_ANSWERS));
  }
  function idOfAnswer(text) {
    var list = knownAnswers();
    for (var i = list.length - 1; i >= 0; i--) if (list[i][1] === text) return list[i][0];
    return null;
  }

  function addFeedback(node, answerId) {
    var group = el("div", { className: "feedback", role: "group", "aria-label": T.feedback });
    var thanks = el("span", { className: "thanks", role: "status" });
    [["up", THUMB_UP, T.helpful], ["down", THUMB_DOWN, T.not_helpful]].forEach(function (spec) {
      var button = el("button", {
        type: "button", "aria-label": spec[2], "aria-pressed": "false", "data-vote": spec[0]
      }, [icon(spec[1])]);
      button.addEventListener("click", function () {
        if (button.getAttribute("aria-pressed") === "true") return;
        if (send({ type: "feedback", answer: answerId, vote: spec[0], id: randomId() })) {
          group.querySelectorAll("button").forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
        }
      });
      group.appendChild(button);
    });
    group.appendChild(thanks);
    group.setAttribute("data-answer", answerId);
    node.appendChild(group);
  }

  function answerBubble(id) {
    var a = answers[id];
    if (!a) {
      var b = bubble("bot pending", "");
      b.node.setAttribute("aria-busy", "true");
      b.node.setAttribute("data-answer", id);
      b.textNode.setAttribute("aria-label", T.typing);
      a = answers[id] = { node: b.node, textNode: b.textNode, text: "", gap: false, done: false };
    }
    return a;
  }

  function finishAnswer(id, text) {
    var a = answerBubble(id);
    delete inflight[id];
    if (a.done) return;
    a.done = true;
    a.text = text;
    a.node.classList.remove("pending");
    a.node.removeAttribute("aria-busy");
    a.textNode.removeAttribute("aria-label");
    if (!text) { // nothing visible: a notice follows as a message of its own
      a.node.remove();
      return;
    }
    var stick = nearBottom();
    a.textNode.textContent = text;
    remember(id, text);
    addFeedback(a.node, id);
    scrollDown(stick);
  }

  function showHistory(history) {
    // Quiet while the whole conversation is redrawn (after a reload or reconnect): a screen
    // reader should announce new messages, not read the history out again.
    log.setAttribute("aria-live", "off");
    window.setTimeout(function () { log.setAttribute("aria-live", "polite"); }, 0);
    log.textContent = "";
    answers = {};
    userBubbles = {};
    historyAnswer = null;
    if (CONFIG.greeting) bubble("bot greeting", CONFIG.greeting);
    var userTexts = [];
    history.forEach(function (m) {
      if (m.role === "user") {
        bubble("user", m.text);
        userTexts.push(m.text);
      } else {
        var b = bubble("bot", m.text);
        var id = idOfAnswer(m.text);
        if (id) addFeedback(b.node, id);
        historyAnswer = { node: b.node, text: m.text };
      }
    });
    // Answers still being written when the socket dropped: show them again, they will complete.
    Object.keys(inflight).forEach(function (id) {
      if (userTexts.slice(-10).indexOf(inflight[id]) >= 0) { delete inflight[id]; return; }
      bubble("user", inflight[id]);
      answerBubble(id);
    });
    Object.keys(pending).forEach(function (id) {
      userBubbles[id] = bubble("user", pending[id]);
    });
    scrollDown(true);
  }

  function markFailed(id) {
    var b = userBubbles[id];
    delete pending[id];
    if (b && !b.node.classList.contains("failed")) {
      b.node.classList.add("failed");
      b.node.appendChild(el("span", { className: "state", text: T.not_sent }));
    }
  }

  // -- the connection -----------------------------------------------------------------------

  var ws = null;
  var welcomed = false;
  var attempt = 0;
  var retryTimer = null;

  function send(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN || !welcomed) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    if (ws || retryTimer) return;
    status.textContent = attempt ? T.reconnecting : T.connecting;
    var socket = ws = new WebSocket(wsUrl);
    welcomed = false;
    socket.onopen = function () {
      socket.send(JSON.stringify({ type: "hello", token: load("localStorage", "token", null) }));
    };
    socket.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      receive(frame);
    };
    socket.onclose = function () {
      if (ws !== socket) return;
      ws = null;
      welcomed = false;
      status.textContent = navigator.onLine === false ? T.offline : T.reconnecting;
      var delay = Math.min(30000, 500 * Math.pow(2, attempt++)) * (0.5 + Math.random() / 2);
      retryTimer = window.setTimeout(function () { retryTimer = null; connect(); }, delay);
    };
  }

  window.addEventListener("online", function () {
    if (retryTimer) { window.clearTimeout(retryTimer); retryTimer = null; }
    connect();
  });

  function receive(frame) {
    switch (frame.type) {
      case "welcome":
        welcomed = true;
        attempt = 0;
        status.textContent = "";
        if (!frame.resumed) save("localStorage", "answers", null);
        save("localStorage", "token", frame.token);
        showHistory(frame.history || []);
        Object.keys(pending).forEach(function (id) { send({ type: "message", id: id, text: pending[id] }); });
        break;
      case "ack":
        if (!userBubbles[frame.id]) userBubbles[frame.id] = bubble("user", frame.text); // sent from another tab
        delete pending[frame.id];
        inflight[frame.answer] = frame.text;
        answerBubble(frame.answer);
        break;
      case "delta":
        var a = answerBubble(frame.id);
        if (a.done) break;
        if (!a.gap && frame.at === a.text.length) {
          var stick = nearBottom();
          a.text += frame.text;
          a.textNode.textContent = a.text;
          scrollDown(stick);
        } else {
          a.gap = true; // joined mid-answer: the done frame brings all of it
        }
        break;
      case "done":
        if (!answers[frame.id] && historyAnswer && historyAnswer.text === frame.text) {
          // Saved (and shown from history) before this tab's socket was registered.
          if (!historyAnswer.node.querySelector(".feedback")) addFeedback(historyAnswer.node, frame.id);
          remember(frame.id, frame.text);
          break;
        }
        finishAnswer(frame.id, frame.text);
        break;
      case "message":
        var waiting = answers[frame.reply_to];
        if (waiting && !waiting.done && !waiting.text) { // an error or notice instead of an answer
          waiting.done = true;
          waiting.node.remove();
          delete inflight[frame.reply_to];
        }
        // Only a frame of this kind is a person's reply: an answer of the model never is one.
        if (frame.kind === "agent") bubble("agent", frame.text, frame.agent);
        else bubble("bot", frame.text);
        break;
      case "voted":
        var group = log.querySelector('.feedback[data-answer="' + CSS.escape(frame.answer) + '"]');
        if (group) {
          group.querySelectorAll("button").forEach(function (b) {
            b.setAttribute("aria-pressed", String(b.getAttribute("data-vote") === frame.vote));
          });
          group.querySelector(".thanks").textContent = T.thanks;
        }
        break;
      case "error":
        if (frame.id) markFailed(frame.id);
        bubble("bot notice", frame.text);
        break;
    }
  }

  // -- opening, closing, typing ---------------------------------------------------------------

  function openPanel() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    panel.setAttribute("aria-modal", String(NARROW.matches));
    save("sessionStorage", "open", true);
    connect();
    scrollDown(true);
    input.focus();
  }
  function closePanel() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    save("sessionStorage", "open", null);
    launcher.focus();
  }

  launcher.addEventListener("click", function () { if (panel.hidden) openPanel(); else closePanel(); });
  closeButton.addEventListener("click", closePanel);

  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape") {
      event.preventDefault();
      closePanel();
    } else if (event.key === "Tab" && NARROW.matches) {
      // Full screen on a phone: Tab stays inside the panel, as in any dialog.
      var focusable = Array.prototype.filter.call(
        panel.querySelectorAll("button, textarea, [tabindex='0']"),
        function (node) { return !node.disabled && node.offsetParent !== null; }
      );
      var first = focusable[0], last = focusable[focusable.length - 1];
      var active = root.activeElement;
      if (event.shiftKey && active === first) { event.preventDefault(); last.focus(); }
      else if (!event.shiftKey && active === last) { event.preventDefault(); first.focus(); }
    }
  });

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 140) + "px";
  }
  input.addEventListener("input", autosize);
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit", { cancelable: true }));
    }
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (!text.trim()) return;
    var id = randomId();
    pending[id] = text;
    userBubbles[id] = bubble("user", text);
    send({ type: "message", id: id, text: text }); // else sent on the next welcome
    input.value = "";
    autosize();
    input.focus();
  });

  function mount() {
    document.body.appendChild(host);
    if (load("sessionStorage", "open", false)) openPanel();
  }
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);

  window.ParleyChat = { open: openPanel, close: closePanel };
})(/*PARLEY_CONFIG*/{});
