# Replaces doctest's doctestAddTests.cmake (run by doctest_discover_tests after
# each test binary is linked; same -D TEST_* inputs). doctest's script runs the
# binary once more per test case to learn its suite for ADD_LABELS -- hundreds
# of runs, most of a minute per binary under the sanitizers. This one runs it
# once: `--list-test-cases --reporters=xml` names every case with its suite.
#
# It also makes sure each ctest test runs its case: doctest's script split names
# at ';' (CMake's list separator) into filters that matched no case, and a run
# of no case passes. Here a ';' becomes ',' in the ctest name and the wildcard
# '?' in the filter, and a run that selects no case fails.
set(prefix "${TEST_PREFIX}")
set(suffix "${TEST_SUFFIX}")
set(script "")
set(tests "")

function(add_command name)
  set(args "")
  foreach(arg ${ARGN})
    if(arg MATCHES "[^-./:a-zA-Z0-9_]")
      string(APPEND args " [==[${arg}]==]")
    else()
      string(APPEND args " ${arg}")
    endif()
  endforeach()
  set(script "${script}${name}(${args})\n" PARENT_SCOPE)
endfunction()

# The listing's ';' were replaced by "<s>" (no '<' occurs unescaped inside
# XML attributes), as CMake would split lists there -- entities end in ';'.
function(xml_unescape out text)
  string(REPLACE "&quot<s>" "\"" text "${text}")
  string(REPLACE "&apos<s>" "'" text "${text}")
  string(REPLACE "&lt<s>" "<" text "${text}")
  string(REPLACE "&gt<s>" ">" text "${text}")
  string(REPLACE "&amp<s>" "&" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

if(NOT EXISTS "${TEST_EXECUTABLE}")
  message(FATAL_ERROR "test executable '${TEST_EXECUTABLE}' does not exist")
endif()
set(spec "")
if(TEST_SPEC MATCHES .)
  set(spec "--test-case=${TEST_SPEC}")
endif()
execute_process(
  COMMAND ${TEST_EXECUTOR} "${TEST_EXECUTABLE}" ${spec} --list-test-cases --reporters=xml
  OUTPUT_VARIABLE output
  RESULT_VARIABLE result
  WORKING_DIRECTORY "${TEST_WORKING_DIR}")
if(NOT result EQUAL 0)
  message(FATAL_ERROR "listing the tests of '${TEST_EXECUTABLE}' failed (${result}):\n${output}")
endif()

# One <TestCase name="..." testsuite="..." .../> element per line.
string(REPLACE ";" "<s>" output "${output}")
string(REGEX MATCHALL "<TestCase [^\n]*" cases "${output}")
foreach(line IN LISTS cases)
  if(NOT line MATCHES " name=\"([^\"]*)\"")
    message(FATAL_ERROR "unexpected test listing line: ${line}")
  endif()
  xml_unescape(name "${CMAKE_MATCH_1}")
  set(labels "")
  if(TEST_ADD_LABELS AND line MATCHES " testsuite=\"([^\"]*)\"")
    xml_unescape(labels "${CMAKE_MATCH_1}")
    string(REPLACE "<s>" "," labels "${labels}")
  endif()
  string(REPLACE "<s>" "," test "${name}")
  # doctest reads commas in a filter as separators: escape them.
  string(REPLACE "," "\\," filter "${name}")
  string(REPLACE "<s>" "?" filter "${filter}")
  add_command(add_test "${prefix}${test}${suffix}" ${TEST_EXECUTOR} "${TEST_EXECUTABLE}"
              "--test-case=${filter}" ${TEST_EXTRA_ARGS})
  add_command(set_tests_properties "${prefix}${test}${suffix}" PROPERTIES
              WORKING_DIRECTORY "${TEST_WORKING_DIR}" ${TEST_PROPERTIES}
              FAIL_REGULAR_EXPRESSION "test cases: *0 [|]" LABELS ${labels})
  list(APPEND tests "${prefix}${test}${suffix}")
endforeach()
if(NOT tests)
  message(FATAL_ERROR "'${TEST_EXECUTABLE}' lists no test cases:\n${output}")
endif()
add_command(set ${TEST_LIST} ${tests})
file(WRITE "${CTEST_FILE}" "${script}")
