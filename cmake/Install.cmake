# cmake --install: the binary, the man page, the systemd units, the sysusers.d file and the
# example configuration. DESTDIR and --prefix are honoured; the units' ExecStart= paths follow
# the prefix given at install time.
include(GNUInstallDirs)

install(TARGETS qnbd RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_SOURCE_DIR}/docs/qnbd.8 DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
install(FILES ${CMAKE_SOURCE_DIR}/systemd/example.conf DESTINATION ${CMAKE_INSTALL_DOCDIR})

# A directory systemd's pkg-config file names (VARIABLE), for this prefix: as systemd itself
# says for its own prefix (Debian: units in /lib/systemd/system), under CMAKE_INSTALL_PREFIX
# for another (/usr/local/lib/systemd/system, which systemd also reads), FALLBACK (relative to
# the prefix) without pkg-config. Relative when under the prefix, so --prefix moves it.
function(qnbd_systemd_dir out variable fallback)
  set(dir ${fallback})
  if(PKG_CONFIG_EXECUTABLE)
    execute_process(COMMAND ${PKG_CONFIG_EXECUTABLE} --variable=prefix systemd
                    OUTPUT_VARIABLE pc_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
                    RESULT_VARIABLE rc ERROR_QUIET)
    if(rc EQUAL 0 AND pc_prefix)
      set(defines)
      if(NOT pc_prefix STREQUAL CMAKE_INSTALL_PREFIX)
        set(defines --define-variable=prefix=${CMAKE_INSTALL_PREFIX}
                    --define-variable=root_prefix=${CMAKE_INSTALL_PREFIX}
                    --define-variable=rootprefix=${CMAKE_INSTALL_PREFIX})
      endif()
      execute_process(COMMAND ${PKG_CONFIG_EXECUTABLE} ${defines} --variable=${variable} systemd
                      OUTPUT_VARIABLE pc_dir OUTPUT_STRIP_TRAILING_WHITESPACE
                      RESULT_VARIABLE rc ERROR_QUIET)
      if(rc EQUAL 0 AND pc_dir)
        set(dir ${pc_dir})
      endif()
    endif()
  endif()
  string(FIND "${dir}" "${CMAKE_INSTALL_PREFIX}/" at)
  if(at EQUAL 0)
    file(RELATIVE_PATH dir ${CMAKE_INSTALL_PREFIX} ${dir})
  endif()
  set(${out} ${dir} PARENT_SCOPE)
endfunction()

qnbd_systemd_dir(unit_dir systemdsystemunitdir lib/systemd/system)
qnbd_systemd_dir(sysusers_dir sysusersdir lib/sysusers.d)
set(QNBD_SYSTEMD_UNIT_DIR ${unit_dir} CACHE STRING
    "Where systemd units are installed (relative: under the prefix)")
set(QNBD_SYSUSERS_DIR ${sysusers_dir} CACHE STRING
    "Where the sysusers.d file is installed (relative: under the prefix)")

# The units say ExecStart=/usr/bin/qnbd (so that they verify as they are in the source tree);
# the installed copies name the binary where this install puts it. They are written at install
# time (--prefix is known only then) to a directory of this install's own, so that two installs
# from one build tree never share a half-written file.
set(QNBD_UNITS qnbd@.service qnbd@.socket qnbd-attach@.service)
if(IS_ABSOLUTE ${CMAKE_INSTALL_BINDIR})
  set(bindir_code "${CMAKE_INSTALL_BINDIR}")
else()
  set(bindir_code "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}")
endif()
if(IS_ABSOLUTE ${QNBD_SYSTEMD_UNIT_DIR})
  set(unitdir_code "${QNBD_SYSTEMD_UNIT_DIR}")
else()
  set(unitdir_code "\${CMAKE_INSTALL_PREFIX}/${QNBD_SYSTEMD_UNIT_DIR}")
endif()
install(CODE "
  string(RANDOM LENGTH 12 tag)
  set(tmp \"${CMAKE_BINARY_DIR}/systemd-units-\${tag}\")
  set(files)
  foreach(unit ${QNBD_UNITS})
    file(READ \"${CMAKE_SOURCE_DIR}/systemd/\${unit}\" text)
    string(REPLACE \"/usr/bin/qnbd \" \"${bindir_code}/qnbd \" text \"\${text}\")
    file(WRITE \"\${tmp}/\${unit}\" \"\${text}\")
    list(APPEND files \"\${tmp}/\${unit}\")
  endforeach()
  file(INSTALL DESTINATION \"${unitdir_code}\" TYPE FILE FILES \${files})
  file(REMOVE_RECURSE \"\${tmp}\")
")
install(FILES ${CMAKE_SOURCE_DIR}/systemd/qnbd.conf DESTINATION ${QNBD_SYSUSERS_DIR})
