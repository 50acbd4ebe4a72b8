// The web page served at GET /: page.html, embedded into the binary at build time
// (embed_page.cmake), so that the server works offline with nothing beside it.
#pragma once

namespace patchcore::serve {

extern const char* const kPageHtml;

}  // namespace patchcore::serve
