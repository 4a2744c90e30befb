import { startPage } from "./page.js";

// A bad link: only the words and the language switch.
startPage(async () => {});
