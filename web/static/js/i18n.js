// UI strings live in /static/i18n/<locale>.json; zh-CN unless the buyer chose English, which
// is remembered in localStorage.
export const LOCALES = ["zh-CN", "en"];
const DEFAULT_LOCALE = "zh-CN";
const STORAGE_KEY = "linkshop.locale";

let locale = DEFAULT_LOCALE;
let strings = {};

export const currentLocale = () => locale;

export function storedLocale() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    return LOCALES.includes(saved) ? saved : DEFAULT_LOCALE;
  } catch {
    return DEFAULT_LOCALE; // storage can be off (private browsing): the default then
  }
}

export async function loadLocale(wanted) {
  const next = LOCALES.includes(wanted) ? wanted : DEFAULT_LOCALE;
  const response = await fetch(`/static/i18n/${next}.json`);
  strings = await response.json();
  locale = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // not remembered; the page still switches
  }
  document.documentElement.lang = next;
  translate(document);
}

// t("keys.title", {n: 3}): the string with {n} replaced; the key itself when missing,
// so a forgotten string shows up instead of vanishing.
export function t(key, params = {}) {
  const text = Object.hasOwn(strings, key) ? strings[key] : key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

export const has = (key) => Object.hasOwn(strings, key);

// Static markup names its strings: data-i18n (text), data-i18n-placeholder, data-i18n-aria-label.
export function translate(root) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-placeholder]")) {
    node.setAttribute("placeholder", t(node.dataset.i18nPlaceholder));
  }
  for (const node of root.querySelectorAll("[data-i18n-aria-label]")) {
    node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel));
  }
  const title = document.querySelector("title[data-i18n-title]");
  if (title) document.title = `${t(title.dataset.i18nTitle)} · Linkshop`;
}
