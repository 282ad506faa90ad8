// The login link carries its token in the URL fragment, which the browser
// never sends to a server (nor into a Referer or a server log). Here it is
// moved into the form, removed from the address bar and history, and posted.
const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
if (m) {
  history.replaceState(null, '', location.pathname);
  const ready = () => {
    document.getElementById('token').value = decodeURIComponent(m[1]);
    document.getElementById('login').submit();
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', ready);
  else ready();
}
