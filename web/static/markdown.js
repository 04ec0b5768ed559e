// A small, safe Markdown subset, rendered straight to DOM nodes.
//
// Text only ever reaches the page through text nodes (append(string) / textContent), never
// through innerHTML, so HTML in an answer shows as literal text and cannot become markup.
// Links keep only http(s) and mailto targets. Supported: paragraphs (single newlines become
// line breaks), # headings, - / * / 1. lists, ``` fenced code, > quotes, --- rules,
// `code`, **bold**, *italic*, _italic_ and [links](https://…).

const SAFE_URL = /^(https?:\/\/|mailto:)/i;
const INLINE = new RegExp([
  "(?<code>`[^`\\n]+`)",
  "\\*\\*(?<strong>\\S(?:[\\s\\S]*?\\S)?)\\*\\*",
  "\\*(?<em>[^\\s*](?:[^*]*?[^\\s*])?)\\*",
  "(?<![A-Za-z0-9])_(?<em2>[^\\s_](?:[^_]*?[^\\s_])?)_(?![A-Za-z0-9])",
  "\\[(?<label>[^\\]\\n]+)\\]\\((?<href>[^()\\s]+)\\)",
].join("|"));

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;
const QUOTE = /^\s*>\s?/;
const ITEM = /^\s*(?:(?<bullet>[-*+])|(?<number>\d{1,9})[.)])\s+(?<text>.*)$/;
const RULE = /^\s*([-*_])(?:\s*\1){2,}\s*$/;

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Inline spans of `text` appended to `parent`. */
function inline(text, parent) {
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      parent.append(rest);
      return;
    }
    if (match.index) parent.append(rest.slice(0, match.index));
    const g = match.groups;
    if (g.code) {
      parent.append(el("code", g.code.slice(1, -1)));
    } else if (g.strong) {
      const strong = el("strong");
      inline(g.strong, strong);
      parent.append(strong);
    } else if (g.em || g.em2) {
      const em = el("em");
      inline(g.em || g.em2, em);
      parent.append(em);
    } else if (SAFE_URL.test(g.href)) {
      const link = el("a");
      link.href = g.href;
      link.rel = "noopener noreferrer nofollow";
      link.target = "_blank";
      inline(g.label, link);
      parent.append(link);
    } else {
      parent.append(match[0]);
    }
    rest = rest.slice(match.index + match[0].length);
  }
}

/** Lines joined by <br>, each with its inline spans. */
function lines(texts, parent) {
  texts.forEach((text, i) => {
    if (i) parent.append(el("br"));
    inline(text.trim(), parent);
  });
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || ITEM.test(line) || RULE.test(line);
}

function fence(src, i, parent) {
  const [, marker, lang] = FENCE.exec(src[i]);
  const body = [];
  let j = i + 1;
  while (j < src.length && src[j].trim() !== marker) body.push(src[j++]);
  const pre = el("pre");
  const code = el("code", body.join("\n"));
  if (lang) code.dataset.lang = lang;
  pre.append(code);
  parent.append(pre);
  return j + 1;
}

function list(src, i, parent) {
  const first = ITEM.exec(src[i]).groups;
  const ordered = Boolean(first.number);
  const node = el(ordered ? "ol" : "ul");
  if (ordered && Number(first.number) !== 1) node.start = Number(first.number);
  const items = [];
  let j = i;
  for (; j < src.length; j++) {
    const match = ITEM.exec(src[j]);
    if (match && Boolean(match.groups.number) === ordered) items.push([match.groups.text]);
    else if (match || !src[j].trim() || !/^\s/.test(src[j])) break;
    else items.at(-1).push(src[j]);
  }
  for (const itemLines of items) {
    const li = el("li");
    lines(itemLines, li);
    node.append(li);
  }
  parent.append(node);
  return j;
}

function blocks(src, parent) {
  let i = 0;
  while (i < src.length) {
    const line = src[i];
    if (!line.trim()) {
      i++;
    } else if (FENCE.test(line)) {
      i = fence(src, i, parent);
    } else if (HEADING.test(line)) {
      const [, hashes, text] = HEADING.exec(line);
      const heading = el(`h${Math.min(hashes.length + 2, 6)}`);
      inline(text, heading);
      parent.append(heading);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < src.length && QUOTE.test(src[i])) inner.push(src[i++].replace(QUOTE, ""));
      const quote = el("blockquote");
      blocks(inner, quote);
      parent.append(quote);
    } else if (ITEM.test(line)) {
      i = list(src, i, parent);
    } else {
      const para = [];
      while (i < src.length && src[i].trim() && !(para.length && startsBlock(src[i]))) para.push(src[i++]);
      const p = el("p");
      lines(para, p);
      parent.append(p);
    }
  }
}

/** A <div class="markdown"> holding `source` rendered as the safe subset above. */
export function renderMarkdown(source) {
  const root = el("div");
  root.className = "markdown";
  blocks(String(source ?? "").replace(/\r\n?/g, "\n").split("\n"), root);
  return root;
}
