# Runs one compile-fail test (see tests/CMakeLists.txt): builds TARGET in
# BUILD_DIR and passes only when the build fails with a diagnostic matching the
# regex on SOURCE's `// ECOPT_EXPECT_DIAGNOSTIC: <regex>` line.
cmake_minimum_required(VERSION 3.25)

file(STRINGS "${SOURCE}" expectation REGEX "^// ECOPT_EXPECT_DIAGNOSTIC: ")
string(REGEX REPLACE "^// ECOPT_EXPECT_DIAGNOSTIC: " "" expectation "${expectation}")
if(expectation STREQUAL "")
  message(FATAL_ERROR "${SOURCE} has no '// ECOPT_EXPECT_DIAGNOSTIC: <regex>' line")
endif()

set(config_args "")
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}" ${config_args}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)

if(result EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not: ${SOURCE} lacks a member its concept requires.\n${output}")
endif()
if(NOT output MATCHES "${expectation}")
  message(FATAL_ERROR "${TARGET} failed to compile, but the diagnostic does not match '${expectation}':\n${output}")
endif()
message(STATUS "${TARGET} fails to compile as expected; the diagnostic says: ${CMAKE_MATCH_0}")
