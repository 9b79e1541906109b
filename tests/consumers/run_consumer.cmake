# Drives the packaging tests (see tests/CMakeLists.txt). Run with cmake -P.
#
# MODE=install    cmake --install BUILD_DIR [--config CONFIG] into a fresh PREFIX,
#                 then checks that the package files are there.
# MODE=configure  configures the project SOURCE_DIR in a fresh BINARY_DIR.
# MODE=consumer   configure as above, build it, run BINARY_DIR/EXECUTABLE.
#
# Configure inputs: GENERATOR, MAKE_PROGRAM, CXX_COMPILER, CXX_FLAGS, BUILD_TYPE,
# and where ecopt is: PREFIX_PATH (an install prefix), ECOPT_DIR (a directory
# holding ecoptConfig.cmake) or ECOPT_SOURCE_DIR (for add_subdirectory).
# EXPECT_ECOPT_DIR_UNDER: the configured ecopt_DIR must lie under this path
# (proves which ecopt package was found).
cmake_minimum_required(VERSION 3.25)

function(run_step what)
  string(REPLACE ";" " " shown "${ARGN}")
  message(STATUS "${what}: ${shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${what} failed (${result}):\n${out}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

if(MODE STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  set(config_args "")
  if(CONFIG)
    set(config_args --config "${CONFIG}")
  endif()
  run_step("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" ${config_args} --prefix "${PREFIX}")
  file(GLOB_RECURSE config_files "${PREFIX}/*/ecoptConfig.cmake")
  file(GLOB_RECURSE version_files "${PREFIX}/*/ecoptConfigVersion.cmake")
  file(GLOB_RECURSE target_files "${PREFIX}/*/ecoptTargets.cmake")
  foreach(required IN ITEMS config_files version_files target_files)
    if(NOT ${required})
      message(FATAL_ERROR "the install into ${PREFIX} has no ${required}:\n${step_output}")
    endif()
  endforeach()
  if(NOT EXISTS "${PREFIX}/include/ecopt/ecopt.hpp")
    message(FATAL_ERROR "the install into ${PREFIX} has no include/ecopt/ecopt.hpp")
  endif()
  message(STATUS "installed ecopt into ${PREFIX}: ${config_files}")
  return()
endif()

if(NOT MODE STREQUAL "configure" AND NOT MODE STREQUAL "consumer")
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

# A fresh build tree every time: the test proves a clean configure works.
file(REMOVE_RECURSE "${BINARY_DIR}")
set(configure_args -S "${SOURCE_DIR}" -B "${BINARY_DIR}"
    "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF")
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(DEFINED CXX_FLAGS)
  list(APPEND configure_args "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
endif()
if(BUILD_TYPE)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
if(PREFIX_PATH)
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${PREFIX_PATH}")
endif()
if(ECOPT_DIR)
  list(APPEND configure_args "-Decopt_DIR=${ECOPT_DIR}")
endif()
if(ECOPT_SOURCE_DIR)
  list(APPEND configure_args "-DECOPT_SOURCE_DIR=${ECOPT_SOURCE_DIR}")
endif()

run_step("configure" "${CMAKE_COMMAND}" ${configure_args})
message("${step_output}")

if(EXPECT_ECOPT_DIR_UNDER)
  file(STRINGS "${BINARY_DIR}/CMakeCache.txt" found_dir REGEX "^ecopt_DIR:")
  string(REGEX REPLACE "^ecopt_DIR:[A-Z]+=" "" found_dir "${found_dir}")
  file(REAL_PATH "${found_dir}" found_real)
  file(REAL_PATH "${EXPECT_ECOPT_DIR_UNDER}" expected_real)
  string(FIND "${found_real}/" "${expected_real}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "ecopt was found in '${found_dir}', expected under '${EXPECT_ECOPT_DIR_UNDER}'")
  endif()
  message(STATUS "ecopt_DIR = ${found_dir}")
endif()

if(MODE STREQUAL "configure")
  return()
endif()

run_step("build" "${CMAKE_COMMAND}" --build "${BINARY_DIR}" --parallel 2)
run_step("run" "${BINARY_DIR}/${EXECUTABLE}")
message("${step_output}")
