/** OHIF configuration for tests/test_viewer_ohif.py, served as /app-config.js.
 *
 * One DICOMweb data source, same origin: tests/viewer/server.py proxies /dicom-web
 * to the test's Orthanc (its DICOMweb plugin), so no request leaves the page's
 * origin. Nothing that needs the internet is on: no analytics, no OIDC, no
 * investigational-use dialog. OHIF's first-run tour still starts in a new browser
 * profile; the test dismisses it as a user would ("Skip all").
 */
const dicomWebRoot = window.location.origin + '/dicom-web';

window.config = {
  name: 'triage-node viewer test',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showLoadingIndicator: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  showErrorDetails: 'always',
  maxNumRequests: { interaction: 100, thumbnail: 10, prefetch: 10 },
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'Orthanc (test, DICOMweb plugin)',
        name: 'orthanc',
        qidoRoot: dicomWebRoot,
        wadoRoot: dicomWebRoot,
        wadoUriRoot: dicomWebRoot,
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        supportsReject: false,
        staticWado: false,
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
  httpErrorHandler: error => {
    console.warn('DICOMweb request failed', error && error.status);
  },
};
