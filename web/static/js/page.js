import { $ } from "./dom.js";
import { currentLocale, loadLocale, storedLocale, t } from "./i18n.js";

// Every page: load its language, wire the header's language switch, and (re)draw the page's
// own content, which happens again after a switch so prices and dates follow the language.
export async function startPage(render) {
  await loadLocale(storedLocale());
  const toggle = $("#lang-switch");
  const label = () => {
    const other = currentLocale() === "en" ? "zh-CN" : "en";
    toggle.textContent = t(`lang.${other}`);
    toggle.setAttribute("lang", other);
    toggle.dataset.target = other;
  };
  label();
  toggle.addEventListener("click", async () => {
    await loadLocale(toggle.dataset.target);
    label();
    await render();
  });
  await render();
}

// What the page is about, from its path: /order/<no> → <no>, /product/<id> → <id>.
export function pathArg() {
  return decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
}
