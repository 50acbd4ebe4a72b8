# Writes OUTPUT, a C++ file defining patchcore::serve::kPageHtml as the text of INPUT.
file(READ "${INPUT}" text)
string(FIND "${text}" ")PAGE\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw string's end marker )PAGE\"")
endif()
file(WRITE "${OUTPUT}.tmp"
  "// Generated from ${INPUT} by embed_page.cmake: do not edit.\n"
  "#include \"page.h\"\n"
  "namespace patchcore::serve {\n"
  "const char* const kPageHtml = R\"PAGE(${text})PAGE\";\n"
  "}\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
