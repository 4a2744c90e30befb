import { copyText, downloadText } from "./clipboard.js";
import { el } from "./dom.js";
import { t } from "./i18n.js";

// Says "Copied" (or that it failed) where a screen reader hears it: the region is aria-live.
async function copyWithFeedback(text, announcer, button) {
  const copied = await copyText(text);
  announcer.textContent = t(copied ? "keys.copied" : "keys.copy_failed");
  if (copied) {
    const label = button.textContent;
    button.textContent = t("keys.copied");
    setTimeout(() => (button.textContent = label), 2000);
  }
}

// The delivered keys, each with a copy button, plus "copy all" and "download .txt".
// `reportForm(index)`, when given, adds a "report a bad key" part under each key.
export function keyList(orderNo, keys, { reportForm } = {}) {
  const announcer = el("p", { class: "announcer", "aria-live": "polite", role: "status" });
  const items = keys.map((key, index) => {
    const copy = el("button", { type: "button", class: "small", text: t("keys.copy"),
      "aria-label": t("keys.copy_n", { n: index + 1 }) });
    copy.addEventListener("click", () => copyWithFeedback(key, announcer, copy));
    return el("li", { class: "key" },
      el("code", { class: "key-value", text: key }),
      el("div", { class: "key-actions" }, copy),
      reportForm ? reportForm(index) : null);
  });
  const copyAll = el("button", { type: "button", text: t("keys.copy_all") });
  copyAll.addEventListener("click", () => copyWithFeedback(keys.join("\n"), announcer, copyAll));
  const download = el("button", { type: "button", text: t("keys.download") });
  download.addEventListener("click", () => downloadText(`${orderNo}.txt`, `${keys.join("\n")}\n`));
  return el("div", { class: "keys" },
    el("ol", { class: "key-list" }, items),
    el("div", { class: "actions" }, copyAll, download),
    announcer);
}
