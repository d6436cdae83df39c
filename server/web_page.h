// The web page served at GET /: a chat with the model (streamed from /v1/chat/completions) and
// live panels plotted from GET /stats once a second (tokens/s, bytes read per token, effective
// bandwidth, FFN hit rate, I/O wait vs compute per token). One static HTML file with its script
// and style inline, compiled into the binary; it loads nothing from the network. The page itself
// needs no API key; with one, open it as /?key=KEY and its calls send it. /?q=TEXT sends TEXT.
#ifndef FLASHLM_SERVER_WEB_PAGE_H_
#define FLASHLM_SERVER_WEB_PAGE_H_

#include <string_view>

namespace flashlm::server {

// The page's bytes (static storage).
std::string_view WebPage();

}  // namespace flashlm::server

#endif  // FLASHLM_SERVER_WEB_PAGE_H_
