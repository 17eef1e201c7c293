// Shows each [data-en][data-zh] element of this widget in the page's language, and keeps
// doing so when the language is switched (the hidden #dl-locale marker's text changes).
const dlLocalize = (root) => {
  const apply = () => {
    const marker = document.querySelector("#dl-locale");
    const code = document.body.dataset.dlLang || (marker ? marker.innerText.trim() : "en");
    const zh = code.startsWith("zh");
    root.querySelectorAll("[data-en][data-zh]").forEach((el) => {
      const text = zh ? el.dataset.zh : el.dataset.en;
      if (el.tagName === "INPUT") el.setAttribute("aria-label", text); else el.textContent = text;
    });
  };
  apply();
  const marker = document.querySelector("#dl-locale");
  if (marker) new MutationObserver(apply).observe(marker, { childList: true, subtree: true, characterData: true });
  return apply;
};
const dlRelocalize = dlLocalize(element);
