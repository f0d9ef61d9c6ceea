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
  var PERSON = "M12 12c2.21 0 4-1.79 4-4s-1.79-4-4-4-4 1.79-4 4 1.79 4 4 4zm0 2c-2.67 0-8 1.34-8 4v2h16v-2c0-2.66-5.33-4-8-4z";
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
  // Shown once the welcome says a person can be asked for here.
  var personButton = el("button", { type: "button", className: "person", hidden: "" }, [
    icon(PERSON), el("span", { text: T.person })
  ]);
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
    el("div", { className: "header" }, [
      el("h2", { id: "parley-title", text: CONFIG.title }), personButton, closeButton
    ]),
    log, status, form
  ]);
  root.appendChild(launcher);
  root.appendChild(panel);

  // -- Markdown: a small, safe subset, built from DOM nodes ---------------------------------------
  // Answers (the model's words) and a person's replies are Markdown. They are never parsed as
  // HTML: a hand-written scanner, one pass over the text, makes elements with createElement and
  // text with text nodes, so `<img onerror>` or `<script>` is shown as the characters it is. A
  // link becomes <a> only for http, https or mailto; any other link is its text alone. Supported:
  // paragraphs, line breaks, *em* _em_ **strong** __strong__, `code`, ``` fenced blocks (with a
  // Copy button), - * + and 1. lists (one level), # headings (as strong paragraphs),
  // [text](url) and bare http(s) URLs. Anything else is text.

  var SAFE_SCHEMES = ["http:", "https:", "mailto:"];
  var ESCAPABLE = "\\`*_[]()#+-.!<>~";
  var URL_TRAIL = ".,;:!?*_'\"";

  function isSpace(c) { return c === "" || c === " " || c === "\n" || c === "\t" || c === "\r" || c === "\f" || c === "\u00a0"; }
  function isWordChar(c) { return (c >= "0" && c <= "9") || c.toLowerCase() !== c.toUpperCase(); } // digit or letter

  function safeHref(url) {
    var parsed;
    try { parsed = new URL(url); } catch (e) { return null; } // relative or not a URL: no link
    return SAFE_SCHEMES.indexOf(parsed.protocol) >= 0 ? parsed.href : null;
  }

  // A link to a safe address, else a span (inert: its text only).
  function link(url) {
    var href = safeHref(url);
    if (!href) return el("span", { className: "inert-link" });
    return el("a", { href: href, rel: "noopener noreferrer", target: "_blank" });
  }

  // The end of a bare URL starting at `i`: up to whitespace, less the punctuation that ends a
  // sentence and a ")" that closes a parenthesis opened before the URL.
  function bareUrlEnd(s, i) {
    var j = i, opened = 0, closed = 0;
    while (j < s.length) {
      var c = s.charAt(j);
      if (isSpace(c) || c === "<" || c === ">" || c === "`" || c === '"') break;
      if (c === "(") opened++;
      else if (c === ")") closed++;
      j++;
    }
    while (j > i) {
      var last = s.charAt(j - 1);
      if (URL_TRAIL.indexOf(last) >= 0) j--;
      else if (last === ")" && closed > opened) { j--; closed--; }
      else break;
    }
    return j;
  }
  function startsBareUrl(s, i) {
    var head = s.substr(i, 8).toLowerCase();
    return (head.slice(0, 7) === "http://" || head === "https://") && !isWordChar(s.charAt(i - 1));
  }

  // Inline Markdown of `s` appended to `parent`. Linear: every search ahead is cached or consumes
  // what it passes over, and emphasis is matched with a stack (CommonMark's delimiter idea, simplified).
  function inline(s, parent, withLinks) {
    var n = s.length;
    var items = []; // nodes, in order; an emphasis opener is a text node here until it is closed
    var openers = []; // {ch, len, at}: at = its index in items
    var count = {}; // "*1", "*2", "_1", "_2" -> openers of that kind on the stack
    var buf = "";
    function flush() { if (buf) { items.push(document.createTextNode(buf)); buf = ""; } }

    // Backtick runs, and for each the next run of the same length (a code span's end).
    var runs = [], runAt = {}, nextSame = [], lastOfLen = {};
    for (var p = 0; p < n; p++) {
      if (s.charAt(p) !== "`") continue;
      var q = p;
      while (q < n && s.charAt(q) === "`") q++;
      runAt[p] = runs.length;
      runs.push({ at: p, len: q - p });
      p = q - 1;
    }
    for (var r = runs.length - 1; r >= 0; r--) {
      nextSame[r] = lastOfLen[runs[r].len] === undefined ? -1 : lastOfLen[runs[r].len];
      lastOfLen[runs[r].len] = r;
    }

    function close(ch, len) {
      if (!count[ch + len]) return false;
      var o;
      do { o = openers.pop(); count[o.ch + o.len]--; } while (o.ch !== ch || o.len !== len);
      var node = el(len === 2 ? "strong" : "em");
      items.splice(o.at + 1).forEach(function (child) { node.appendChild(child); });
      items.length = o.at; // the opener's own characters go
      items.push(node);
      return true;
    }

    // Each "(" and the ")" that closes it (none across whitespace): where a link's address ends.
    var match = {};
    if (withLinks && s.indexOf("](") >= 0) {
      var pending = [];
      for (var m = 0; m < n; m++) {
        var mc = s.charAt(m);
        if (mc === "(") pending.push(m);
        else if (mc === ")") { if (pending.length) match[pending.pop()] = m; }
        else if (isSpace(mc)) pending.length = 0;
      }
    }

    var closeAt = -1, openAt = -1; // the next "]" and "[" at or after where the scan is
    var i = 0;
    while (i < n) {
      var c = s.charAt(i);
      if (c === "\\" && i + 1 < n && ESCAPABLE.indexOf(s.charAt(i + 1)) >= 0) {
        buf += s.charAt(i + 1);
        i += 2;
      } else if (c === "\n") {
        buf += "\n"; // kept in the text (copying, reading), shown by the <br>
        flush();
        items.push(el("br"));
        i++;
      } else if (c === "`") {
        var run = runs[runAt[i]], end = nextSame[runAt[i]];
        if (end < 0) {
          buf += s.substr(i, run.len);
          i += run.len;
        } else {
          var code = s.slice(i + run.len, runs[end].at).split("\n").join(" ");
          if (code.length >= 2 && code.charAt(0) === " " && code.charAt(code.length - 1) === " " && code.trim()) {
            code = code.slice(1, -1);
          }
          flush();
          items.push(el("code", { text: code }));
          i = runs[end].at + runs[end].len;
        }
      } else if (c === "*" || c === "_") {
        var k = i;
        while (k < n && s.charAt(k) === c) k++;
        var len = k - i, before = s.charAt(i - 1), after = s.charAt(k);
        var canOpen = !isSpace(after), canClose = i > 0 && !isSpace(before);
        if (c === "_") { // snake_case_names stay as they are
          canOpen = canOpen && !isWordChar(before);
          canClose = canClose && !isWordChar(after);
        }
        i = k;
        if (len > 3) { buf += s.slice(k - len, k); continue; }
        flush();
        if (canClose) {
          (len === 3 ? [1, 2] : len === 2 ? [2, 1] : [1]).forEach(function (size) {
            if (size <= len && close(c, size)) len -= size;
          });
        }
        if (len && canOpen) {
          (len === 3 ? [2, 1] : [len]).forEach(function (size) {
            items.push(document.createTextNode(c === "*" ? "**".slice(0, size) : "__".slice(0, size)));
            openers.push({ ch: c, len: size, at: items.length - 1 });
            count[c + size] = (count[c + size] || 0) + 1;
          });
        } else if (len) {
          buf += c === "*" ? "***".slice(0, len) : "___".slice(0, len);
        }
      } else if (c === "[" && withLinks) {
        if (closeAt < i) { closeAt = s.indexOf("]", i); if (closeAt < 0) closeAt = n; }
        if (openAt <= i) { openAt = s.indexOf("[", i + 1); if (openAt < 0) openAt = n; }
        // [label](address): the address has no spaces and its parentheses balance.
        var u = closeAt < n && openAt > closeAt && s.charAt(closeAt + 1) === "(" ? match[closeAt + 1] : undefined;
        if (u !== undefined) {
          var url = s.slice(closeAt + 2, u), label = s.slice(i + 1, closeAt);
          if (url.charAt(0) === "<" && url.charAt(url.length - 1) === ">") url = url.slice(1, -1);
          var a = link(url);
          inline(label || url, a, false);
          flush();
          items.push(a);
          i = u + 1;
        } else {
          buf += c;
          i++;
        }
      } else if ((c === "h" || c === "H") && withLinks && startsBareUrl(s, i)) {
        var stop = bareUrlEnd(s, i), address = s.slice(i, stop);
        var node = address.slice(address.indexOf("//") + 2) ? link(address) : null; // not "https://" alone
        if (node && node.tagName === "A") {
          node.textContent = address;
          flush();
          items.push(node);
        } else {
          buf += address;
        }
        i = Math.max(stop, i + 1);
      } else {
        buf += c;
        i++;
      }
    }
    flush();
    items.forEach(function (node) { parent.appendChild(node); });
  }

  function copyText(text) {
    function fallback() { // no clipboard API (a page served over plain http): the old way
      var area = el("textarea", { readonly: "", tabindex: "-1", "aria-hidden": "true", className: "visually-hidden" });
      area.value = text;
      var back = root.activeElement;
      root.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      area.remove();
      if (back) back.focus();
      if (!ok) throw new Error("copy refused");
    }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      return navigator.clipboard.writeText(text).catch(fallback);
    }
    return new Promise(function (resolve) { fallback(); resolve(); });
  }

  function codeBlock(text, lang, open) {
    var attrs = { className: "codeblock" + (open ? " open" : "") };
    lang = lang.replace(/[^A-Za-z0-9_+.#-]/g, "").slice(0, 20);
    if (lang) attrs["data-lang"] = lang;
    var copy = el("button", { type: "button", className: "copy", "aria-label": T.copy_code, text: T.copy });
    var timer = 0;
    copy.addEventListener("click", function () {
      copyText(text).then(function () {
        copy.textContent = T.copied;
        copy.setAttribute("aria-label", T.copied);
        copy.setAttribute("data-copied", "true");
        window.clearTimeout(timer);
        timer = window.setTimeout(function () {
          copy.textContent = T.copy;
          copy.setAttribute("aria-label", T.copy_code);
          copy.removeAttribute("data-copied");
        }, 2000);
      }, function () { /* nothing copied: the button stays as it was */ });
    });
    // tabindex: a long line scrolls sideways, and the keyboard must be able to scroll it too.
    return el("div", attrs, [el("pre", { tabindex: "0" }, [el("code", { text: text })]), copy]);
  }

  function fenceOf(line) { // "```" or "~~~" (3 or more) that opens or closes a code block, or ""
    var ch = line.charAt(0), k = 0;
    if (ch !== "`" && ch !== "~") return "";
    while (line.charAt(k) === ch) k++;
    return k >= 3 ? line.slice(0, k) : "";
  }

  function listItem(line) { // {ordered, start, rest} for "- x", "* x", "+ x", "3. x", "3) x"
    var c = line.charAt(0);
    if ((c === "-" || c === "*" || c === "+") && (line.charAt(1) === " " || line.charAt(1) === "\t")) {
      return { ordered: false, start: 1, rest: line.slice(2) };
    }
    var k = 0;
    while (k < 9 && line.charAt(k) >= "0" && line.charAt(k) <= "9") k++;
    if (k && (line.charAt(k) === "." || line.charAt(k) === ")") && (line.charAt(k + 1) === " " || line.charAt(k + 1) === "\t")) {
      return { ordered: true, start: parseInt(line.slice(0, k), 10), rest: line.slice(k + 2) };
    }
    return null;
  }

  // The Markdown `text` as a DocumentFragment. While an answer streams, a code block not yet
  // closed is shown open (its text so far).
  function markdown(text) {
    var frag = document.createDocumentFragment();
    var lines = text.split("\n");
    var para = null, list = null, item = null;
    function endPara() {
      if (!para) return;
      var p = el("p");
      inline(para.join("\n"), p, true);
      frag.appendChild(p);
      para = null;
    }
    function endItem() {
      if (!item) return;
      var li = el("li");
      inline(item.join("\n"), li, true);
      list.appendChild(li);
      item = null;
    }
    function endList() {
      endItem();
      if (list) frag.appendChild(list);
      list = null;
    }
    for (var k = 0; k < lines.length; k++) {
      var line = lines[k].replace(/\r$/, "");
      var t = line.trim();
      var fence = fenceOf(t);
      if (fence) {
        endPara();
        endList();
        var body = [], closed = false;
        for (k++; k < lines.length; k++) {
          var inner = lines[k].replace(/\r$/, "");
          var end = fenceOf(inner.trim());
          if (end && end.charAt(0) === fence.charAt(0) && end.length >= fence.length && end === inner.trim()) {
            closed = true;
            break;
          }
          body.push(inner);
        }
        frag.appendChild(codeBlock(body.join("\n"), t.slice(fence.length).trim().split(" ")[0], !closed));
        continue;
      }
      if (!t) { endPara(); endList(); continue; }
      var level = 0;
      while (level < 7 && t.charAt(level) === "#") level++;
      if (level >= 1 && level <= 6 && (t.length === level || t.charAt(level) === " ")) {
        endPara();
        endList();
        var strong = el("strong");
        inline(t.slice(level).trim(), strong, true);
        frag.appendChild(el("p", { className: "heading" }, [strong]));
        continue;
      }
      var start = listItem(t);
      if (start) {
        endPara();
        if (list && (list.tagName === "OL") !== start.ordered) endList();
        if (!list) {
          list = el(start.ordered ? "ol" : "ul");
          if (start.ordered && start.start !== 1) list.setAttribute("start", String(start.start));
        }
        endItem();
        item = [start.rest.trim()];
      } else if (item) {
        item.push(t); // a line that goes on with the item above
      } else {
        (para = para || []).push(t);
      }
    }
    endPara();
    endList();
    return frag;
  }

  function show(node, text, asMarkdown) {
    if (!asMarkdown) { node.textContent = text; return; }
    var frag = markdown(text);
    if (node.replaceChildren) node.replaceChildren(frag); // one operation: no flicker
    else { node.textContent = ""; node.appendChild(frag); }
  }

  // -- messages on screen -------------------------------------------------------------------

  var answers = {}; // answer id -> {node, textNode, text, gap, done}
  var userBubbles = {}; // client message id -> bubble
  var pending = {}; // client message id -> text: not yet acknowledged by the server
  var askedPerson = {}; // the pending ids that are "Talk to a person" presses, not typed text
  var inflight = {}; // answer id -> the user's text: acknowledged, answer not complete
  var historyAnswer = null; // the last answer shown from history: {node, text}

  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  }
  function scrollDown(force) {
    if (force || nearBottom()) log.scrollTop = log.scrollHeight;
  }

  // `agent`: a person of the support team wrote it; their name ("Ann (support team)") is shown
  // above, with a person's icon, in a bubble unlike the bot's. `asMarkdown`: an answer or a
  // person's reply; the visitor's own words, notices and the greeting are shown as plain text.
  function bubble(kind, text, agent, asMarkdown) {
    var who = agent
      ? el("span", { className: "agent-name" }, [
        icon(PERSON), document.createTextNode(agent), el("span", { className: "visually-hidden", text: ": " })
      ])
      : el("span", { className: "visually-hidden", text: (kind === "user" ? T.you : CONFIG.title) + ": " });
    var textNode = el(asMarkdown ? "div" : "p", { className: asMarkdown ? "text md" : "text" });
    show(textNode, text, asMarkdown);
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

  // -- a write action's Confirm / Cancel ------------------------------------------------------
  // Under the answer that asks: what it will do (the model's words: text only, never markup) and
  // two buttons. A press disables them until a settled frame (to every tab) puts the outcome in
  // their place, or an error frame for the press offers them again. Offers are kept with the
  // answers, so a reload shows them under the answer in the history.

  var OUTCOMES = ["confirmed", "cancelled", "expired"];
  var MAX_KNOWN_OFFERS = 20;
  var presses = {}; // client id of a press not yet answered -> its choice box

  function knownOffers() { return load("localStorage", "offers", []); }
  function rememberOffer(offer) {
    var list = knownOffers().filter(function (item) { return item.call !== offer.call; });
    list.push(offer);
    save("localStorage", "offers", list.slice(-MAX_KNOWN_OFFERS));
  }
  function rememberOutcome(call, outcome) {
    var list = knownOffers();
    list.forEach(function (item) { if (item.call === call) item.outcome = outcome; });
    save("localStorage", "offers", list);
  }
  function choiceBoxes(call) {
    return log.querySelectorAll('.choice[data-call="' + CSS.escape(call) + '"]');
  }

  function setChoiceEnabled(box, on) {
    if (on && (box.classList.contains("expired") || box.hasAttribute("data-outcome"))) return;
    box.querySelectorAll("button").forEach(function (b) { b.disabled = !on; });
  }
  function expire(box) {
    if (box.hasAttribute("data-outcome")) return;
    box.classList.add("expired");
    setChoiceEnabled(box, false);
    box.querySelector(".outcome").textContent = T.expired;
  }
  function showOutcome(box, outcome) {
    var buttons = box.querySelector(".choice-buttons");
    var hadFocus = buttons && buttons.contains(root.activeElement);
    if (buttons) buttons.remove();
    box.classList.remove("expired");
    box.setAttribute("data-outcome", outcome);
    box.querySelector(".outcome").textContent = T[outcome];
    if (hadFocus) input.focus(); // the buttons are gone: on to the next message
  }

  function addChoice(parent, offer) {
    var whatId = "parley-what-" + offer.call;
    var buttons = el("div", { className: "choice-buttons" });
    var box = el("div", { className: "choice", role: "group", "aria-labelledby": whatId, "data-call": offer.call }, [
      el("p", { id: whatId, className: "what", text: offer.what }),
      buttons,
      el("p", { className: "outcome", role: "status" })
    ]);
    [["confirm", T.confirm], ["cancel", T.cancel]].forEach(function (spec) {
      var button = el("button", {
        type: "button", className: spec[0], "data-choice": spec[0], "aria-label": spec[1],
        "aria-describedby": whatId, text: spec[1]
      });
      button.addEventListener("click", function () {
        var id = randomId();
        if (!send({ type: "choice", call: offer.call, choice: spec[0], id: id })) return;
        presses[id] = box;
        var hadFocus = root.activeElement === button;
        setChoiceEnabled(box, false);
        if (hadFocus) log.focus(); // where the answer to the press is read out
      });
      buttons.appendChild(button);
    });
    parent.insertBefore(box, parent.querySelector(":scope > .feedback")); // above the thumbs
    if (OUTCOMES.indexOf(offer.outcome) >= 0) {
      showOutcome(box, offer.outcome);
    } else {
      var left = offer.expires * 1000 - Date.now();
      if (!(left > 0)) expire(box);
      else if (left < 2147483647) window.setTimeout(function () { expire(box); }, left);
    }
  }

  function showChoice(offer) {
    if (choiceBoxes(offer.call).length) return; // shown already (a frame received twice)
    var a = answers[offer.reply_to];
    var parent = a && a.node.isConnected ? a.node : null;
    if (!parent) {
      var group = log.querySelector('.feedback[data-answer="' + CSS.escape(offer.reply_to) + '"]');
      parent = group ? group.parentNode : null;
    }
    if (!parent) { // the answer is not on this screen: the buttons on their own
      parent = el("div", { className: "msg bot" });
      log.appendChild(parent);
    }
    var stick = nearBottom();
    addChoice(parent, offer);
    scrollDown(stick);
  }

  function pressRefused(id) {
    var box = presses[id];
    delete presses[id];
    if (box) setChoiceEnabled(box, true);
  }

  function answerBubble(id) {
    var a = answers[id];
    if (!a) {
      var b = bubble("bot pending", "", null, true);
      b.node.setAttribute("aria-busy", "true"); // screen readers wait for the whole answer
      b.node.setAttribute("data-answer", id);
      b.textNode.setAttribute("aria-label", T.typing);
      a = answers[id] = { node: b.node, textNode: b.textNode, text: "", shown: "", frame: 0, gap: false, done: false };
    }
    return a;
  }

  // The answer's text so far, drawn again from the start (Markdown read whole: a "**" may be
  // closed later), at most once a frame of the screen, in one replaceChildren.
  function paint(a) {
    if (a.frame) { window.cancelAnimationFrame(a.frame); a.frame = 0; }
    if (a.shown === a.text) return;
    var stick = nearBottom();
    show(a.textNode, a.text, true);
    a.shown = a.text;
    scrollDown(stick);
  }
  function paintSoon(a) {
    if (!a.frame) a.frame = window.requestAnimationFrame(function () { a.frame = 0; paint(a); });
  }

  function finishAnswer(id, text) {
    var a = answerBubble(id);
    delete inflight[id];
    if (a.done) return;
    a.done = true;
    a.text = text;
    var stick = nearBottom();
    paint(a); // the whole answer drawn, then announced once: aria-busy goes after
    a.node.classList.remove("pending");
    a.node.removeAttribute("aria-busy");
    a.textNode.removeAttribute("aria-label");
    if (!text) { // nothing visible: a notice follows as a message of its own
      a.node.remove();
      return;
    }
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
    presses = {};
    historyAnswer = null;
    var asked = {}; // answer id -> its bubble, for the offers kept with it
    if (CONFIG.greeting) bubble("bot greeting", CONFIG.greeting);
    var userTexts = [];
    history.forEach(function (m) {
      if (m.role === "user") {
        bubble("user", m.text);
        userTexts.push(m.text);
      } else {
        var b = bubble("bot", m.text, null, true);
        var id = idOfAnswer(m.text);
        if (id) addFeedback(b.node, id);
        if (id) asked[id] = b.node; // the last answer with this text: where its offers go
        historyAnswer = { node: b.node, text: m.text };
      }
    });
    knownOffers().forEach(function (o) { if (asked[o.reply_to]) addChoice(asked[o.reply_to], o); });
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
    delete askedPerson[id];
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
        if (!frame.resumed) { save("localStorage", "answers", null); save("localStorage", "offers", null); }
        save("localStorage", "token", frame.token);
        showHistory(frame.history || []);
        personButton.hidden = !frame.person;
        Object.keys(pending).forEach(function (id) { send(outgoing(id)); });
        break;
      case "ack":
        if (!userBubbles[frame.id]) userBubbles[frame.id] = bubble("user", frame.text); // sent from another tab
        delete pending[frame.id];
        delete askedPerson[frame.id];
        inflight[frame.answer] = frame.text;
        answerBubble(frame.answer);
        break;
      case "delta":
        var a = answerBubble(frame.id);
        if (a.done) break;
        if (!a.gap && frame.at === a.text.length) {
          a.text += frame.text;
          paintSoon(a);
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
        // A notice in answer to a press (the press failed): its buttons are offered again.
        Object.keys(presses).forEach(function (id) {
          if (String(frame.reply_to).slice(-id.length - 1) === ":" + id) pressRefused(id);
        });
        // Only a frame of this kind is a person's reply: an answer of the model never is one.
        if (frame.kind === "agent") bubble("agent", frame.text, frame.agent, true);
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
      case "choice":
        if ([frame.call, frame.what, frame.reply_to].some(function (v) { return typeof v !== "string"; })) break;
        var offer = {
          call: frame.call, what: frame.what, expires: Number(frame.expires), reply_to: frame.reply_to, outcome: null
        };
        rememberOffer(offer);
        showChoice(offer);
        break;
      case "settled":
        if (OUTCOMES.indexOf(frame.outcome) < 0) break;
        rememberOutcome(frame.call, frame.outcome);
        choiceBoxes(frame.call).forEach(function (box) { showOutcome(box, frame.outcome); });
        Object.keys(presses).forEach(function (id) {
          if (presses[id].getAttribute("data-call") === frame.call) delete presses[id];
        });
        break;
      case "error":
        if (frame.id) { markFailed(frame.id); pressRefused(frame.id); }
        else if (frame.code === "rate_limited") Object.keys(presses).forEach(pressRefused); // it could not say which
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
  // A message's frame, sent now or again after a reconnect (same id: answered once).
  function outgoing(id) {
    // The page's path picks the site's settings for that page, if it has its own (a profile).
    var page = window.location.pathname.slice(0, 201);
    return askedPerson[id] ? { type: "handoff", id: id } : { type: "message", id: id, text: pending[id], page: page };
  }
  function say(text, person) {
    var id = randomId();
    pending[id] = text;
    if (person) askedPerson[id] = true;
    userBubbles[id] = bubble("user", text);
    send(outgoing(id)); // else sent on the next welcome
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (!text.trim()) return;
    say(text, false);
    input.value = "";
    autosize();
    input.focus();
  });
  personButton.addEventListener("click", function () {
    say(T.asked_person, true);
    input.focus();
  });

  function mount() {
    document.body.appendChild(host);
    if (load("sessionStorage", "open", false)) openPanel();
  }
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);

  // `markdown`: how the widget shows an answer's Markdown (a DocumentFragment; never HTML).
  window.ParleyChat = { open: openPanel, close: closePanel, markdown: markdown };
})(/*PARLEY_CONFIG*/{});
